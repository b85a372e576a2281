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

With ``--policy`` (a DITTO run on that model) it also asks what DITTO's reward wants from the
shifted start — hanging at rest, where the demos never go: the start is filtered for three steps
at zero torque, paired with the expert window whose first state is nearest on h (as
``starts='world'`` pairs world-data states), and each action sequence is scored by DITTO's
discounted imagined return (γ = ``--gamma``) over ``--rest-horizons`` steps — the expert's own
swing-up (closed loop on the true dynamics, fed to the model), zero torque, a constant ±2, and
the policy acting in the model (the demos: those the policy learned from). A policy that holds
+2 swings about a point 23° from the bottom and never rises past horizontal (2 N·m against
gravity's 5 at horizontal); if that sequence out-scores the swing-up, hanging low is DITTO's
optimum there. With ``--world-starts N`` it asks the same of N world-data states, the starts
``starts='world'`` trains on (:func:`world_report`): each sequence's imagined return beside its
true discounted cost, by region of the start, and how often the expert's own actions score best.

    python -m benchmarks.pendulum_model_check RUN_DIR [--expert pendulum/expert-v0] [--policy DITTO_RUN]
        [--world-starts 512]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from wmil.data.dataset import load
from wmil.data.experts import PendulumExpert
from wmil.imagination.expert import ExpertLatents
from wmil.imagination.metrics import ditto_similarity, ditto_similarity_matrix, eval_rows
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


def rest_starts(model, angles: np.ndarray, steps: int = 3):
    """The model's filtered states ``(B,)`` and the true observations ``(B, 3)`` after ``steps``
    observations of the pendulum released at rest at ``angles`` (π: straight down), zero torque."""
    obs = torch.tensor(np.stack([np.cos(angles), np.sin(angles), np.zeros_like(angles)], -1), dtype=torch.float32)
    n, zero = len(obs), torch.zeros(len(obs), 1)
    state = model.obs_step(model.initial(n), zero, obs, torch.ones(n, dtype=torch.bool))
    for _ in range(steps - 1):
        obs = true_rollout(obs, zero[None])[0]
        state = model.obs_step(state, zero, obs, torch.zeros(n, dtype=torch.bool))
    return state, obs


def expert_swing_up(obs: torch.Tensor, horizon: int) -> torch.Tensor:
    """``(H, B, 1)``: the scripted expert's torques, acting on the true dynamics from ``obs (B, 3)``."""
    expert, actions = PendulumExpert(), []
    for _ in range(horizon):
        action = torch.from_numpy(np.stack([expert.act(row) for row in obs.numpy()]))
        actions.append(action)
        obs = true_rollout(obs, action[None])[0]
    return torch.stack(actions)


def rest_report(model, latents: ExpertLatents, actor, features: str, horizons, gamma: float) -> None:
    """Print, per horizon, DITTO's discounted imagined return of each action sequence from the
    bottom at rest (the module docstring)."""
    state, obs = rest_starts(model, np.pi + np.linspace(-0.1, 0.1, 9))
    for H in horizons:
        similarity, window = nearest_windows(model, latents, state, H)
        print(f"from hanging at rest, {H} steps: nearest expert state on h at similarity {float(similarity.mean()):.2f}")
        scored = imagined_returns(model, state, window, torque_sequences(obs, H, "expert swing-up"), actor, features,
                                  gamma)
        for name, (ret, taken) in scored.items():
            speed = true_rollout(obs, taken).abs()[..., 2].max(0).values.mean()
            print(f"  {name:16s} return {float(ret.mean()):7.3f}   true peak |w| {float(speed):.2f}")


def nearest_windows(model, latents: ExpertLatents, state, horizon: int):
    """``(similarity (B,), window (H+1, B, D))``: for each model state ``state (B,)`` the expert
    window of ``latents`` (on h) whose first state is nearest on h, as ``starts='world'`` pairs
    its starts, and that similarity."""
    expert_h, starts = model.features(latents.states, "deter"), latents.starts(horizon)
    similarity, where = ditto_similarity_matrix(model.features(state, "deter"), expert_h[torch.as_tensor(starts)]).max(1)
    return similarity, expert_h[torch.as_tensor(starts[where.numpy()][None] + np.arange(horizon + 1)[:, None])]


def torque_sequences(obs: torch.Tensor, horizon: int, expert_name: str = "expert") -> dict:
    """The action sequences ``(H, B, 1)`` both reports score from true observations ``obs (B, 3)``:
    the scripted expert closed loop on the true dynamics, zero, ±2, and ``None`` for the policy
    acting in the model."""
    shape = (horizon, len(obs), 1)
    return {expert_name: expert_swing_up(obs, horizon), "zero": torch.zeros(shape), "+2": torch.full(shape, 2.0),
            "-2": torch.full(shape, -2.0), "policy": None}


def imagined_returns(model, state, window: torch.Tensor, sequences: dict, actor, features: str, gamma: float) -> dict:
    """``name -> (return (B,), actions taken (H, B, 1))``: DITTO's discounted imagined return of
    each sequence from ``state (B,)`` against ``window (H+1, B, D)`` on h, with the same prior
    samples for every sequence (``None``: the policy acts, deterministically, in the model)."""
    horizon = window.shape[0] - 1
    discount = gamma ** torch.arange(horizon, dtype=torch.float32)[:, None]
    out = {}
    for name, seq in sequences.items():
        torch.manual_seed(1)  # the same prior samples for every sequence
        s, reward, taken = state, [], []
        for k in range(horizon):
            action = actor(model.features(s, features), deterministic=True)[0] if seq is None else seq[k]
            taken.append(action)
            s = model.imagine_step(s, action)
            reward.append(ditto_similarity(window[k + 1], model.features(s, "deter")))
        out[name] = ((discount * torch.stack(reward)).sum(0), torch.stack(taken))
    return out


def true_cost(obs0: torch.Tensor, actions: torch.Tensor, gamma: float) -> torch.Tensor:
    """``(B,)`` the discounted Pendulum-v1 cost θ² + 0.1·ω² + 0.001·u² (the negated reward) of
    ``actions (H, B, 1)`` from ``obs0 (B, 3)`` on the true dynamics, θ measured from upright."""
    p, cost = PendulumExpert, torch.zeros(len(obs0))
    obs = obs0
    for k, a in enumerate(actions):
        th = torch.atan2(obs[:, 1], obs[:, 0])
        u = a[:, 0].clamp(-p.max_torque, p.max_torque)
        cost = cost + gamma ** k * (th ** 2 + 0.1 * obs[:, 2] ** 2 + 0.001 * u ** 2)
        obs = true_rollout(obs, a[None])[0]
    return cost


def world_report(model, latents: ExpertLatents, actor, features: str, world: ExpertLatents, world_obs: torch.Tensor,
                 horizon: int, gamma: float, count: int) -> dict:
    """What DITTO's reward wants from world-data starts, as ``starts='world'`` trains on them.

    ``count`` world-data states (any but an episode's first and last observation, drawn with a
    fixed seed) are each paired with the expert window whose first state is nearest on h, and
    each action sequence — the scripted expert acting closed loop on the true dynamics from the
    world observation, zero torque, ±2, and the policy acting in the model — is scored by DITTO's
    discounted imagined return over ``horizon`` steps. Printed per start region (by the true
    angle: near the bottom, the sides, near the top): the mean nearest-window similarity, each
    sequence's mean return and how often the expert's swing-up scores highest. A reward whose
    optimum is not the expert's behaviour from those starts trains the policy away from it."""
    rng = np.random.default_rng(2)
    inner = np.concatenate([np.arange(o + 1, o + n - 1) for o, n in zip(world.offsets, world.n_obs)])
    rows = rng.choice(inner, min(count, len(inner)), replace=False)
    index = torch.as_tensor(rows)
    state, obs = world.states[index], world_obs[index]
    similarity, window = nearest_windows(model, latents, state, horizon)
    scored = imagined_returns(model, state, window, torque_sequences(obs, horizon), actor, features, gamma)
    returns = {name: ret for name, (ret, _) in scored.items()}
    costs = {name: true_cost(obs, taken, gamma) for name, (_, taken) in scored.items()}
    table = torch.stack(list(returns.values()))                    # (S, B)
    expert_best = table.argmax(0) == 0
    cos = obs[:, 0]
    regions = {"bottom (cos θ < -0.5)": cos < -0.5, "sides": (cos >= -0.5) & (cos <= 0.5), "top (cos θ > 0.5)": cos > 0.5,
               "all": torch.ones_like(cos, dtype=torch.bool)}
    names = list(scored)
    print(f"world-data starts, {horizon} steps, gamma {gamma}: DITTO's imagined return (true discounted cost)")
    print(f"  {'region':22s} {'n':>4s} {'match':>6s} " + " ".join(f"{n:>15s}" for n in names) + "  expert best")
    summary = {}
    for label, mask in regions.items():
        if not bool(mask.any()):
            continue
        cells = " ".join(f"{float(returns[n][mask].mean()):6.3f} ({float(costs[n][mask].mean()):5.1f})" for n in names)
        print(f"  {label:22s} {int(mask.sum()):4d} {float(similarity[mask].mean()):6.3f} {cells}  "
              f"{float(expert_best[mask].float().mean()):.2f}")
        summary[label] = dict(n=int(mask.sum()), match=float(similarity[mask].mean()),
                              expert_best=float(expert_best[mask].float().mean()),
                              **{f"return/{n}": float(returns[n][mask].mean()) for n in names},
                              **{f"cost/{n}": float(costs[n][mask].mean()) for n in names})
    return summary


@torch.no_grad()
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--expert", default="pendulum/expert-v0")
    parser.add_argument("--horizon", type=int, default=15)
    parser.add_argument("--starts", type=int, default=256)
    parser.add_argument("--policy", help="a DITTO run on this model: also score what its reward wants from hanging at rest")
    parser.add_argument("--rest-horizons", type=int, nargs="+", default=[15, 30, 60])
    parser.add_argument("--gamma", type=float, default=0.95, help="DITTO's discount (its default)")
    parser.add_argument("--world-starts", type=int, default=0,
                        help="with --policy: also score the sequences from this many world-data starts (world_report)")
    parser.add_argument("--world-episodes", type=int, default=100, help="world-data episodes (evenly spaced) they come from")
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
    if args.policy:
        from wmil.train.policy import load_policy

        policy = load_policy(args.policy)
        ids = policy.run_config.get("expert_episode_ids")  # the demos the policy learned from
        torch.manual_seed(0)
        demos = ExpertLatents.encode(policy.world_model, expert.select(ids)) if ids else latents
        print(f"{args.policy}: {len(ids) if ids else 'all'} demos")
        rest_report(policy.world_model, demos, policy.actor, policy.features, args.rest_horizons, args.gamma)
        if args.world_starts:
            names = (getattr(model, "run_config", None) or getattr(policy.world_model, "run_config", None)
                     or {}).get("datasets")
            if not names:
                raise SystemExit(f"{args.run}: its run config names no training datasets (--world-starts needs them)")
            world = load(names[0]).spaced(args.world_episodes)
            torch.manual_seed(0)
            world_latents = ExpertLatents.encode(policy.world_model, world)
            world_report(policy.world_model, demos, policy.actor, policy.features, world_latents,
                         torch.from_numpy(world.aligned.obs), args.horizon, args.gamma, args.world_starts)


if __name__ == "__main__":
    main()
