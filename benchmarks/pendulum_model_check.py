"""Does a Pendulum world model answer actions as the real pendulum does? A diagnostic.

Pendulum-v1's dynamics are known in closed form (``w' = clip(w + (a sin θ + b u)·dt, ±8)``,
``θ' = θ + w'·dt`` with the constants the scripted expert uses, :class:`PendulumExpert`), so a world model's imagined rollouts can be checked against the true
ones from the same expert start states under the same action sequences. For each sequence —
the expert's logged actions, all of them negated, only the first negated, all zero — it reports
the model's observation error against the true rollout (the decoded prior, 15 steps) and DITTO's
mean similarity on h to the expert's own latents; then how much negating the actions moves the
angular velocity in the model and in truth. A model whose reward cannot see actions would show
the same similarity for every sequence; one whose dynamics ignore them, a model effect far below
the true one.

    python -m benchmarks.pendulum_model_check RUN_DIR [--expert pendulum/expert-v0]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from wmil.data.dataset import load
from wmil.data.experts import PendulumExpert
from wmil.imagination.expert import ExpertLatents
from wmil.imagination.metrics import ditto_similarity, eval_rows
from wmil.train.world_model import load_world_model


def true_rollout(obs0: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """``(H, B, 3)`` true Pendulum-v1 observations after each of ``actions (H, B, 1)`` from ``obs0 (B, 3)``."""
    p = PendulumExpert
    th, w = torch.atan2(obs0[:, 1], obs0[:, 0]), obs0[:, 2].clone()
    out = []
    for a in actions:
        u = a[:, 0].clamp(-p.max_torque, p.max_torque)
        w = (w + (p.a * torch.sin(th) + p.b * u) * p.dt).clamp(-8, 8)
        th = th + w * p.dt
        out.append(torch.stack([torch.cos(th), torch.sin(th), w], -1))
    return torch.stack(out)


@torch.no_grad()
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--expert", default="pendulum/expert-v0")
    parser.add_argument("--horizon", type=int, default=15)
    parser.add_argument("--starts", type=int, default=256)
    args = parser.parse_args(argv)
    torch.manual_seed(0)  # the posterior samples of the expert latents: the same figures on every run
    model, expert = load_world_model(args.run), load(args.expert)
    latents = ExpertLatents.encode(model, expert)
    H = args.horizon
    rows = eval_rows(latents, H, args.starts, seed=1)
    obs = torch.from_numpy(expert.aligned.obs)[torch.as_tensor(rows)]
    actions = latents.action[torch.as_tensor(rows[None, :] + np.arange(H)[:, None])]
    start, target = latents.sample(rows, H)
    expert_h = model.features(target, "deter")
    sequences = {"expert": actions, "negated": -actions, "first negated": torch.cat([-actions[:1], actions[1:]]),
                 "zero": torch.zeros_like(actions)}
    rolled = {}
    print(f"{args.run}: {len(rows)} expert starts, {H} steps")
    print(f"{'actions':14s} {'obs MSE vs true':>16s} {'w MSE vs true':>14s} {'sim to expert (h)':>18s}")
    for name, seq in sequences.items():
        torch.manual_seed(0)  # the same sampling noise for every sequence
        state, predictions, similarity = start, [], []
        for k in range(H):
            state = model.imagine_step(state, seq[k])
            predictions.append(model.decode(model.features(state, "sample")))
            similarity.append(ditto_similarity(expert_h[k + 1], model.features(state, "deter")))
        predicted, truth = torch.stack(predictions), true_rollout(obs, seq)
        rolled[name] = (predicted, truth)
        print(f"{name:14s} {float(((predicted - truth) ** 2).mean()):16.4f} "
              f"{float(((predicted - truth)[..., 2] ** 2).mean()):14.4f} {float(torch.stack(similarity).mean()):18.4f}")
    for name in ("negated", "first negated"):
        (pe, te), (pn, tn) = rolled["expert"], rolled[name]
        print(f"effect of '{name}' on w (MSE over the window): model {float(((pe - pn)[..., 2] ** 2).mean()):.3f}, "
              f"true {float(((te - tn)[..., 2] ** 2).mean()):.3f}")


if __name__ == "__main__":
    main()
