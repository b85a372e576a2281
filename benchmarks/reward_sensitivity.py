"""How much does DITTO's reward care about each kind of action? A diagnostic, not a score.

From expert start states, roll H steps in a trained world model's prior under several action
sources and report DITTO's latent distance 1 − r (r = z_E·z_A / max(‖z_E‖, ‖z_A‖)²) to the
expert's own latents, mean over steps 1…H and at step H, averaged over a few prior samples:

* the expert's logged actions replayed open loop (the best an open-loop policy could do);
* uniformly random actions; a constant action;
* for discrete actions, the expert's actions with every action of one class replaced by
  another (e.g. LunarLander's side engines by no-op): the reward gap to the expert row is what
  the imagination learner can see of that class;
* optionally, trained policies (run dirs of ``wmil imagine``), sampled and deterministic.

    python -m benchmarks.reward_sensitivity --task lunar --model runs/quality/lunar/wm-rssm-s0 \
        --demos 4 --features mean --replace 1:0 3:0 2:0 --policies runs/quality/lunar/dbc-rssm-k4-s0
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import table, write

EXPERTS = {"cartpole": "cartpole/expert-v0", "lunar": "lunar/expert-v0", "pendulum": "pendulum/expert-v0",
           "pixel-cartpole": "pixel-cartpole/expert-v0"}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=sorted(EXPERTS))
    parser.add_argument("--model", required=True, help="world-model run dir")
    parser.add_argument("--demos", type=int, default=4, help="expert episodes (the first K)")
    parser.add_argument("--horizon", type=int, nargs="+", default=[15])
    parser.add_argument("--features", default="mean", choices=["sample", "mean", "deter"])
    parser.add_argument("--starts", type=int, default=512)
    parser.add_argument("--samples", type=int, default=4, help="prior rollouts per start, averaged")
    parser.add_argument("--replace", nargs="*", default=[], help="discrete: FROM:TO action-class replacements")
    parser.add_argument("--policies", nargs="*", default=[], help="policy run dirs to roll out as well")
    args = parser.parse_args()

    from wmil.train.policy import load_policy
    from wmil.data.dataset import load
    from wmil.imagination.expert import ExpertLatents
    from wmil.imagination.metrics import ditto_similarity
    from wmil.train.world_model import load_world_model

    torch.manual_seed(0)
    wm = load_world_model(args.model)
    spec = wm.spec
    expert = ExpertLatents.encode(wm, load(EXPERTS[args.task]).head(args.demos), features=args.features)
    policies = [(p, load_policy(p)) for p in args.policies]
    rows_out = []
    for H in args.horizon:
        rows = np.random.default_rng(0).choice(expert.starts(H), args.starts)
        index = torch.as_tensor(rows)
        start, target = expert.sample(rows, H)
        target_features = wm.features(target, args.features)

        @torch.no_grad()
        def distance(act) -> tuple[float, float]:
            similarity = []
            for _ in range(args.samples):
                state, steps = start, []
                for t in range(H):
                    state = wm.imagine_step(state, act(state, t))
                    steps.append(ditto_similarity(target_features[t + 1], wm.features(state, args.features)))
                similarity.append(torch.stack(steps))
            mean = torch.stack(similarity).mean(0)  # (H, B)
            return float(1 - mean.mean()), float(1 - mean[-1].mean())

        def constant(value):
            if spec.discrete:
                return lambda s, t: F.one_hot(torch.full((len(rows),), value), spec.action_dim).float()
            return lambda s, t: torch.full((len(rows), spec.action_dim), float(value))

        def random_action(s, t):
            if spec.discrete:
                return F.one_hot(torch.randint(spec.action_dim, (len(rows),)), spec.action_dim).float()
            low, high = torch.tensor(spec.action_low), torch.tensor(spec.action_high)
            return low + (high - low) * torch.rand(len(rows), spec.action_dim)

        def replaced(source: int, to: int):
            def act(s, t):
                a = expert.action[index + t].clone()
                a[:, to] += a[:, source]
                a[:, source] = 0
                return a
            return act

        sources = [("expert actions, open loop", lambda s, t: expert.action[index + t]),
                   ("random actions", random_action),
                   (f"constant action {0 if spec.discrete else 0.0}", constant(0))]
        for pair in args.replace:
            if not spec.discrete:
                parser.error("--replace needs discrete actions")
            source, to = (int(v) for v in pair.split(":"))
            sources.append((f"expert, action {source} -> {to}", replaced(source, to)))
        for path, policy in policies:
            for deterministic in (False, True):
                def act(s, t, policy=policy, deterministic=deterministic):
                    return policy.actor(wm.features(s, policy.features), deterministic=deterministic)[0]
                sources.append((f"policy {os.path.basename(os.path.normpath(path))}"
                                f"{' (deterministic)' if deterministic else ''}", act))
        for name, act in sources:
            mean, last = distance(act)
            rows_out.append([H, name, f"{mean:.4f}", f"{last:.4f}"])
            print(rows_out[-1], flush=True)
    share = expert.action[expert.action_mask].mean(0) if spec.discrete else None
    body = table(["H", "actions", "latent distance, mean 1…H", "at step H"], rows_out)
    body += (f"\n\nWorld model `{args.model}`, expert {EXPERTS[args.task]} (first {args.demos} episodes), "
             f"features `{args.features}`, {args.starts} starts × {args.samples} prior samples.")
    if share is not None:
        body += " Expert action frequencies: " + ", ".join(f"{i}: {float(p):.3f}" for i, p in enumerate(share)) + "."
    write(f"reward_sensitivity-{args.task}.md", "DITTO reward sensitivity", body)


if __name__ == "__main__":
    main()
