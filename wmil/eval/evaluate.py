"""``wmil evaluate``: score a trained policy in the real environment (the only place it is used).

Reports return, expert-normalised score ``(R − R_random) / (R_expert − R_random)`` from the
expert dataset's reference scores, success rate where the env reports ``is_success``, episode
lengths, and the DITTO paper's offline metrics (latent distance of the policy's own imagined
rollouts from expert starts, expert action prediction accuracy) where the policy has a world
model. Writes ``evaluation.json`` into the run directory and, with ``video``, GIFs of episodes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from wmil.errors import UserError
from wmil.runs import write_text_atomic
from wmil.progress import progress_bar

#: Evaluation episodes use seeds far from those of recorded data (0…) and demos (10000…).
EVAL_SEED = 1_000_000


def _env_config(policy, env_id: Optional[str], video: bool):
    from wmil.envs import EnvConfig, env_config_from_dict

    recorded = policy.run_config.get("env")
    if env_id is None and recorded is None:
        raise UserError("the policy's expert dataset does not record its environment; pass --env ID")
    if recorded is not None:
        base = env_config_from_dict(recorded)
        if env_id is not None and env_id != base.env_id:
            base = EnvConfig(env_id, pixels=base.pixels, grayscale=base.grayscale, max_episode_steps=base.max_episode_steps)
    else:
        spec = policy.spec
        base = EnvConfig(env_id, pixels=spec.obs_shape[-1] if spec.pixels else None,
                         grayscale=spec.pixels and spec.obs_shape[0] == 1)
    if video and base.pixels is None:
        kwargs = dict(base.kwargs) if base.kwargs else {}
        kwargs["render_mode"] = "rgb_array"
        base = EnvConfig(base.env_id, pixels=None, grayscale=False, max_episode_steps=base.max_episode_steps,
                         kwargs=tuple(sorted(kwargs.items())))
    return base


def _check_spaces(env, policy, env_id: str) -> None:
    from wmil.data.dataset import spec_from_spaces

    spec = spec_from_spaces(env.observation_space, env.action_space, f"environment {env_id}")
    if (spec.obs_shape, spec.action_dim, spec.discrete) != (policy.spec.obs_shape, policy.spec.action_dim, policy.spec.discrete):
        raise UserError(f"environment {env_id} has obs {spec.obs_shape} and {'discrete' if spec.discrete else 'continuous'} "
                        f"actions ({spec.action_dim}), but the policy expects obs {policy.spec.obs_shape} and "
                        f"{'discrete' if policy.spec.discrete else 'continuous'} ({policy.spec.action_dim}); "
                        "evaluate on the environment the policy was trained for")


def evaluate_policy(run_dir: str | os.PathLike, env_id: Optional[str] = None, episodes: int = 10,
                    seed: int = EVAL_SEED, video: bool = False, video_episodes: int = 1,
                    deterministic: bool = True, offline: bool = True, progress: bool = True,
                    out: Optional[str | os.PathLike] = None, trust: bool = False) -> dict:
    from wmil.algos.base import load_policy
    from wmil.envs import make_env

    if episodes < 1:
        raise UserError(f"--episodes {episodes}: must be at least 1")
    policy = load_policy(run_dir, trust=trust)
    config = _env_config(policy, env_id, video)
    env = make_env(config)
    _check_spaces(env, policy, config.env_id)
    returns, lengths, successes, ever = [], [], [], []
    frames_by_episode: list[list[np.ndarray]] = []
    bar = progress_bar(episodes, f"evaluate {config.env_id}", progress, unit="ep")
    torch.manual_seed(seed)
    try:
        for i in range(episodes):
            obs, info = env.reset(seed=seed + i)
            policy.reset()
            total, steps, frames, reached = 0.0, 0, [], False
            record = video and i < video_episodes
            while True:
                if record:
                    frames.append(_frame(env, obs))
                obs, reward, terminated, truncated, info = env.step(policy.act(obs, deterministic=deterministic))
                total += float(reward)
                steps += 1
                reached = reached or bool(info.get("is_success", False))
                if terminated or truncated:
                    break
            returns.append(total)
            lengths.append(steps)
            if "is_success" in info:
                successes.append(float(info["is_success"]))
                ever.append(float(reached))
            if record:
                frames_by_episode.append(frames)
            bar.update(1)
            bar.set_postfix(mean_return=f"{np.mean(returns):.1f}", refresh=False)
    finally:
        bar.close()
        env.close()
    report = summarize(returns, lengths, successes, policy.run_config, ever)
    report.update({"run": str(run_dir), "env": config.env_id, "episodes": episodes, "seed": seed,
                   "deterministic": deterministic, "algo": policy.run_config.get("algo")})
    if offline and hasattr(policy, "offline_metrics"):
        report.update(policy.offline_metrics())
    out_dir = Path(out) if out else Path(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if frames_by_episode:
        report["videos"] = [str(save_gif(frames, out_dir / "videos" / f"episode_{i}.gif"))
                            for i, frames in enumerate(frames_by_episode)]
    path = out_dir / "evaluation.json"
    write_text_atomic(path, json.dumps(report, indent=2))  # a kill never leaves half a report
    report["report_path"] = str(path)
    return report


def summarize(returns, lengths, successes, run_config: dict, ever=None) -> dict:
    """Return statistics, the expert-normalised score, and where the env reports
    ``is_success``: ``success_rate`` (at the episode's last step, the gymnasium-robotics
    convention) and ``success_any`` (at any step: the convention of tasks that stop at the goal,
    e.g. the VINS paper's Fetch tables)."""
    returns = np.asarray(returns, dtype=np.float64)
    out = {
        "return_mean": float(returns.mean()), "return_std": float(returns.std()),
        "return_stderr": float(returns.std(ddof=1) / np.sqrt(len(returns))) if len(returns) > 1 else 0.0,
        "length_mean": float(np.mean(lengths)), "returns": returns.tolist(),
    }
    lo, hi = run_config.get("ref_min_score"), run_config.get("ref_max_score")
    if lo is not None and hi is not None and hi != lo:
        out["normalized_score"] = float((returns.mean() - lo) / (hi - lo))
        out["ref_min_score"], out["ref_max_score"] = lo, hi
    if successes:
        out["success_rate"] = float(np.mean(successes))
    if ever:
        out["success_any"] = float(np.mean(ever))
    return out


def _frame(env, obs) -> np.ndarray:
    if isinstance(obs, np.ndarray) and obs.dtype == np.uint8 and obs.ndim == 3:
        frame = np.transpose(obs, (1, 2, 0))
        return frame[..., 0] if frame.shape[-1] == 1 else frame
    return env.render()


def save_gif(frames: list[np.ndarray], path: Path, fps: int = 30) -> Path:
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimsave(path, [np.asarray(f, dtype=np.uint8) for f in frames], duration=1 / fps, loop=0)
    return path
