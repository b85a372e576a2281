"""MinAtar measurements (issue #13): the scripted experts against random play, and the choice of
the world model's observation likelihood on 10×10 binary grids.

    python -m benchmarks.minatar experts [--episodes 20] [--max-steps 1000]
    python -m benchmarks.minatar likelihood [--game breakout] [--steps 1500] [--seeds 0]

``experts`` plays each scripted expert and a uniformly random policy for ``--episodes`` episodes
(seeds 0..N-1, the recipes' 1,000-step limit) and writes ``results/minatar-experts.md``.

``misses`` asks whether a Breakout world model can imagine the ball being missed where a policy
misses it. It plays the policy of a run (``--policy RUN``, sampled actions) in the real game; for
each of the last ``--before`` decisions before every lost ball where one first move catches the
ball and another loses it, it branches the real game (a deterministic copy: the move, then the
scripted expert) and, from the model's posterior after the real frames up to there, imagines the
same moves open loop. It counts, at the step where the losing branch ends: whether the model's
imagined frame puts the ball in the bottom row (only a miss does: a caught ball stays in row 8)
and the continue head's P(continue) in losing and catching branches; and P(continue) at the
terminal frame of held-out world episodes (filtered). Writes ``results/minatar-misses.md``
(``--out`` to name it).

    python -m benchmarks.minatar misses --policy RUN --models WM_RUN [WM_RUN …] [--episodes 30]

``likelihood`` trains the ``rssm`` world model (small preset, batch 16×50) on the game's world
dataset (built from its recipe when missing) once with each likelihood and compares, on held-out
episodes: open-loop MSE at horizons 1/5/15 against repeating the last frame, and how well the
imagined frames get the cells right (cell error rate of the thresholded prediction, recall of
the cells that are on — a ball or a bullet is one cell of 400). Writes
``results/minatar-likelihood.md``. The learner cells of the quality table are entries of
``benchmarks.quality.TASKS`` (``minatar-breakout`` …).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, table, write

ROOT = Path(__file__).resolve().parent.parent
GAMES = {"breakout": "MinAtar/Breakout-v1", "spaceinvaders": "MinAtar/SpaceInvaders-v1",
         "asterix": "MinAtar/Asterix-v1"}


def play(env_id: str, policy: str, seed: int, max_steps: int) -> tuple[float, int, float]:
    """(return, length, seconds) of one seeded episode of the expert or a random policy."""
    from wmil.data.experts import make_expert
    from wmil.envs import EnvConfig, make_env

    started = time.perf_counter()
    env = make_env(EnvConfig(env_id, max_episode_steps=max_steps))
    _, info = env.reset(seed=seed)
    env.action_space.seed(seed)
    expert = make_expert(env_id) if policy == "expert" else None
    if expert is not None:
        expert.reset(np.random.default_rng(seed))
    total, steps, done = 0.0, 0, False
    while not done:
        action = expert.act(info["state"]) if expert is not None else env.action_space.sample()
        _, reward, terminated, truncated, info = env.step(action)
        total, steps, done = total + reward, steps + 1, terminated or truncated
    return total, steps, time.perf_counter() - started


def experts(args) -> None:
    rows = []
    for game, env_id in GAMES.items():
        res = {p: [play(env_id, p, s, args.max_steps) for s in range(args.episodes)] for p in ("expert", "random")}
        ex, rnd = np.array([r[0] for r in res["expert"]]), np.array([r[0] for r in res["random"]])
        length = np.array([r[1] for r in res["expert"]])
        rate = length.sum() / sum(r[2] for r in res["expert"])
        full = float(np.mean(length == args.max_steps))
        rows.append([env_id, f"{ex.mean():.1f} ± {ex.std():.1f}", f"{rnd.mean():.2f} ± {rnd.std():.2f}",
                     f"{ex.mean() / max(rnd.mean(), 1e-9):.0f}×", f"{length.mean():.0f}", f"{100 * full:.0f} %",
                     f"{rate:.0f}"])
        print(rows[-1], flush=True)
    body = table(["env", "expert return (mean ± std)", "random return", "expert ÷ random", "expert length",
                  f"expert episodes reaching {args.max_steps} steps", "expert steps/s"], rows)
    body += (f"\n\n{args.episodes} episodes per policy, seeds 0..{args.episodes - 1}, time limit {args.max_steps} "
             "steps (the recipes'), sticky actions (p = 0.1) as MinAtar defines them. The experts read the game's "
             "privileged state and simulate it ahead (`wmil/data/minatar_experts.py`); 'expert steps/s' includes "
             "that search (it bounds how fast expert data records).")
    write("minatar-experts.md", "MinAtar scripted experts vs. random play", body)


def ensure(recipe: str) -> str:
    from wmil.data import names
    from wmil.data.build import build_dataset, load_recipe

    config = load_recipe(ROOT / "datasets" / recipe)
    if not names.exists(config.name):
        build_dataset(config, progress=False)
    return config.name


def cell_metrics(model, dataset: str, seed: int, batches: int = 8, context: int = 10) -> dict:
    """Open-loop errors (world_models.base.open_loop_errors) plus, over the 15 imagined frames,
    the cell error rate of the prediction thresholded at ½ and the recall of on-cells."""
    import torch

    from wmil.data.dataset import MixedSampler, load
    from wmil.world_models.base import open_loop_errors

    data = load(dataset)
    _, val = data.split(model.run_config["train"]["validation_fraction"], seed=model.run_config["train"]["seed"])
    sampler = MixedSampler([val], 32, context + 15, seed=seed + 7, pad=False)
    torch.manual_seed(seed)
    out: dict[str, list[float]] = {}
    for _ in range(batches):
        batch = sampler.sample()
        for k, v in open_loop_errors(model, batch, context).items():
            out.setdefault(k, []).append(v)
        with torch.no_grad():
            predicted = model.open_loop(batch, context, 15) > 0.0          # probability above ½
        truth = batch.obs[:, context:context + 15] > 127
        for h in (1, 5, 15):
            p, t = predicted[:, h - 1], truth[:, h - 1]
            out.setdefault(f"cell_error_h{h}", []).append(float((p != t).float().mean()))
            out.setdefault(f"on_recall_h{h}", []).append(float((p & t).sum() / t.sum().clamp(min=1)))
    return {k: float(np.mean(v)) for k, v in out.items()}


#: Likelihood variants compared: world-model overrides of each.
VARIANTS = {
    "bernoulli": {"obs_likelihood": "bernoulli"},
    "gaussian": {"obs_likelihood": "gaussian"},
    # DreamerV3's 1 % uniform mix in every categorical, against the latent collapse seen with
    # the Bernoulli likelihood (posterior entropy 0.08 nats after 500 updates).
    "bernoulli-unimix": {"obs_likelihood": "bernoulli", "unimix": "0.01"},
    "gaussian-unimix": {"obs_likelihood": "gaussian", "unimix": "0.01"},
}


def likelihood(args) -> None:
    from wmil.train.world_model import load_world_model, train_world_model

    world = ensure(f"minatar-{args.game}-world.yaml")
    runs = Path(args.runs)
    details = []
    for seed in args.seeds:
        for kind in args.variants:
            out = runs / args.game / f"wm-{kind}-s{seed}"
            train_world_model(world, model="rssm", preset="small", out=out, steps=args.steps, seed=seed,
                              overrides={"batch_size": "16", "seq_len": "50", **VARIANTS[kind]}, progress=False)
            model = load_world_model(out)
            metrics = cell_metrics(model, world, seed)
            rows_ = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
            last = [r for r in rows_ if "train/posterior_entropy" in r][-1]
            # Training time from the run's own rate (also right when the run had finished before).
            rate = float(np.median([r["perf/updates_per_s"] for r in rows_ if "perf/updates_per_s" in r]))
            minutes = args.steps / rate / 60
            details.append(dict(game=args.game, likelihood=kind, seed=seed, steps=args.steps, minutes=minutes,
                                posterior_entropy=last["train/posterior_entropy"], kl=last["train/kl"], **metrics))
            print(json.dumps(details[-1]), flush=True)
    jsonl = RESULTS / f"minatar-likelihood-{args.game}.jsonl"
    if jsonl.exists():  # merge: a rerun of a variant, seed and budget replaces it
        new = {(d["likelihood"], d["seed"], d["steps"]) for d in details}
        earlier = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
        details = [d for d in earlier if (d["likelihood"], d["seed"], d["steps"]) not in new] + details
    rows = []
    for kind, steps in sorted({(d["likelihood"], d["steps"]) for d in details}, key=lambda k: (k[1], k[0])):
        ds = [d for d in details if d["likelihood"] == kind and d["steps"] == steps]

        def m(key):
            return float(np.mean([d[key] for d in ds]))

        rows.append([kind, steps, len(ds),
                     *(f"{m(f'open_loop/mse_h{h}'):.4f} ({m(f'open_loop/ratio_h{h}'):.2f})" for h in (1, 5, 15)),
                     *(f"{100 * m(f'cell_error_h{h}'):.2f} %" for h in (1, 15)),
                     *(f"{100 * m(f'on_recall_h{h}'):.1f} %" for h in (1, 15)),
                     f"{m('posterior_entropy'):.2f}" if all("posterior_entropy" in d for d in ds) else "",
                     f"{m('minutes'):.1f}"])
    body = table(["variant", "updates", "seeds", "open-loop MSE h1 (÷ naive)", "h5", "h15", "cell error h1",
                  "cell error h15", "on-cell recall h1", "on-cell recall h15", "posterior entropy (nats)",
                  "train min (shared machine)"], rows)
    body += (f"\n\nGame {args.game}: `rssm` small preset, batch 16×50, on the recipe's world "
             "dataset; evaluated on its held-out episodes (8 batches of 32 windows, 10 observed steps then 15 "
             "imagined with the logged actions). MSE is in `preprocess_pixels` space ([-0.5, 0.5]; a cell that is "
             "wrong costs 1); 'naive' repeats the last observed frame. Cell error: the imagined frame thresholded at "
             "probability ½ against the truth, over all cells; on-cell recall: the fraction of the true 'on' "
             "cells that the imagined frame shows.")
    write(f"minatar-likelihood-{args.game}.md", f"MinAtar {args.game}: Bernoulli vs Gaussian observation likelihood",
          body)
    jsonl.write_text("".join(json.dumps(d) + "\n" for d in details))


def _filter(world_model, frames: list, actions: list):
    """Posterior states ``(T,)`` of one episode's frames (``actions[k]`` taken after frame k)."""
    import torch
    import torch.nn.functional as F

    A = world_model.spec.action_dim
    T = len(frames)
    prev = torch.zeros(1, T, A)
    if T > 1:
        prev[0, 1:] = F.one_hot(torch.as_tensor(actions[:T - 1]), A).float()
    first = torch.zeros(1, T, dtype=torch.bool)
    first[0, 0] = True
    with torch.no_grad():
        posterior, _ = world_model.observe(torch.as_tensor(np.stack(frames))[None], prev, first)
    return posterior[0]


def _branch(state, first: int, steps: int):
    """The real game from privileged ``state``: ``first``, then the scripted expert, until the
    ball is lost or ``steps`` moves. Returns (moves, index of the move that lost the ball or None)."""
    from wmil.data.minatar_experts import BreakoutExpert
    from wmil.envs.minatar import game_state, restore_game

    game, expert, moves = restore_game("breakout", state), BreakoutExpert(), []
    game_code = {index: code for code, index in BreakoutExpert.actions.items()}  # -v1 index -> game action
    for j in range(steps):
        move = first if j == 0 else expert.act(game_state(game))
        _, terminal = game.act(game_code[move])
        moves.append(move)
        if terminal:
            return moves, j
    return moves, None


def misses(args) -> None:
    import torch
    import torch.nn.functional as F

    from wmil.data import load
    from wmil.envs import EnvConfig, make_env
    from wmil.imagination.expert import ExpertLatents
    from wmil.train.policy import load_policy
    from wmil.train.world_model import load_world_model

    policy = load_policy(args.policy)
    env = make_env(EnvConfig(GAMES["breakout"], max_episode_steps=1000))
    torch.manual_seed(args.seed)  # the policy's sampled actions
    episodes = []  # (frames, actions, states) of the policy's episodes that lost the ball
    for seed in range(args.seed, args.seed + args.episodes):
        frame, info = env.reset(seed=seed)
        policy.reset()
        frames, actions, states = [frame], [], [info["state"]]
        while True:
            action = int(policy.act(frame, deterministic=False))
            frame, _, terminated, truncated, info = env.step(action)
            actions.append(action)
            if terminated or truncated:
                break
            frames.append(frame)
            states.append(info["state"])
        if terminated:
            episodes.append((frames, actions, states))
    _, held_out = load(args.world).split(0.1, seed=0)
    ended = held_out.filter(lambda episode: bool(episode.terminations[-1]))
    ended = ended.head(min(args.held_out, len(ended)))
    rows, details = [], []
    for run in args.models:
        torch.manual_seed(0)  # the model's latent samples, the same for every model
        model = load_world_model(run)
        counts = {"lost": [0, 0, []], "caught": [0, 0, []]}  # [branches, ball in row 9, P(continue)]
        decisions = wrong = 0
        for frames, actions, states in episodes:
            posterior = _filter(model, frames, actions)
            T = len(actions)
            for t in range(max(0, T - args.before), T):
                branches = {a: _branch(states[t], a, 12) for a in range(3)}
                ends = [lost for _, lost in branches.values() if lost is not None]
                if not ends or len(ends) == 3:
                    continue  # every move loses, or none does: nothing to tell apart here
                j = min(ends)
                decisions += 1
                wrong += branches[actions[t]][1] == j
                for moves, lost in branches.values():
                    state = posterior[t:t + 1]
                    with torch.no_grad():
                        for move in moves[:j + 1]:
                            state = model.imagine_step(state, F.one_hot(torch.tensor([move]), 3).float())
                        ball = (model.decode(model.features(state))[0, 1] + 0.5).clamp(0, 1)  # channel 1: ball
                        cont = model.continue_prob(state)
                    kind = "lost" if lost == j else "caught"
                    counts[kind][0] += 1
                    counts[kind][1] += int(ball[9].sum() > ball[8].sum())
                    if cont is not None:
                        counts[kind][2].append(float(cont[0]))
        torch.manual_seed(0)  # the posterior's samples: the same draws whatever ran before
        with torch.no_grad():
            latents = ExpertLatents.encode(model, ended)
            cont = model.continue_prob(latents.states[torch.as_tensor(latents.offsets + latents.n_obs - 1)])
        terminal = [] if cont is None else cont.tolist()  # P(continue) at each episode's last frame
        name = Path(run).name
        row = {"model": name, "decisions": decisions, "policy_wrong": wrong}
        for kind in ("lost", "caught"):
            n, row9, cont = counts[kind]
            row[f"{kind}_branches"] = n
            row[f"{kind}_ball_row9"] = row9 / max(n, 1)
            row[f"{kind}_continue_mean"] = float(np.mean(cont)) if cont else None
            row[f"{kind}_continue_below_half"] = float(np.mean(np.array(cont) < 0.5)) if cont else None
        row["terminal_continue_mean"] = float(np.mean(terminal)) if terminal else None
        row["terminal_below_half"] = float(np.mean(np.array(terminal) < 0.5)) if terminal else None
        details.append(row)
        fmt = lambda x: "—" if x is None else f"{x:.2f}"
        rows.append([name, f"{decisions} ({wrong})", f"{row['lost_ball_row9']:.2f} of {row['lost_branches']}",
                     f"{row['caught_ball_row9']:.2f} of {row['caught_branches']}",
                     fmt(row["lost_continue_mean"]), fmt(row["lost_continue_below_half"]),
                     fmt(row["caught_continue_mean"]), fmt(row["caught_continue_below_half"]),
                     fmt(row["terminal_continue_mean"]), fmt(row["terminal_below_half"])])
        print(json.dumps(row), flush=True)
    body = table(["world model", "decisions (policy's move lost)", "losing branches: ball in row 9",
                  "catching branches: ball in row 9", "losing: P(continue) mean", "losing: share < ½",
                  "catching: P(continue) mean", "catching: share < ½", "held-out terminal frames: P(continue)",
                  "share < ½"], rows)
    body += (f"\n\nPolicy `{args.policy}` (sampled actions), {args.episodes} episodes from seed {args.seed}, "
             f"{len(episodes)} of them lost the ball; decisions: the last {args.before} steps before each loss where "
             "one first move catches the ball and another loses it (real game, the scripted expert after the first "
             "move); the model imagines the same moves from its posterior after the real frames up to the decision. "
             "'Ball in row 9': the imagined frame at the losing branch's last step has more ball in the bottom row "
             f"than in row 8 (only a miss puts it there). Held-out terminal frames: {len(ended)} terminated "
             "episodes of the world dataset's validation split, P(continue) at their last frame (filtered).")
    write(args.out, "MinAtar Breakout: can the world model imagine a miss?", body)
    (RESULTS / args.out).with_suffix(".jsonl").write_text("".join(json.dumps(d) + "\n" for d in details))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("experts", help="scripted experts vs random play")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--max-steps", type=int, default=1000)
    p = sub.add_parser("likelihood", help="Bernoulli vs Gaussian world-model likelihood")
    p.add_argument("--game", choices=sorted(GAMES), default="breakout")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["bernoulli", "gaussian"])
    p.add_argument("--runs", default=str(ROOT / "runs" / "minatar"))
    p = sub.add_parser("misses", help="does a Breakout world model imagine the misses a policy makes?")
    p.add_argument("--policy", required=True, help="an imagine run (its policy is played)")
    p.add_argument("--models", nargs="+", required=True, help="train-model runs to check")
    p.add_argument("--world", default="minatar-breakout/world-v0", help="world dataset (held-out terminal frames)")
    p.add_argument("--episodes", type=int, default=30)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--before", type=int, default=6, help="decisions checked before each loss")
    p.add_argument("--held-out", type=int, default=33, help="held-out terminated world episodes")
    p.add_argument("--out", default="minatar-misses.md")
    args = parser.parse_args()
    {"experts": experts, "likelihood": likelihood, "misses": misses}[args.command](args)


if __name__ == "__main__":
    main()
