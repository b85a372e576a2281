"""``wmil evaluate``: score a trained policy in the real environment (the only place it is used).

Reports return, expert-normalised score ``(R − R_random) / (R_expert − R_random)`` from the
expert dataset's reference scores, success rate where the env reports ``is_success``, episode
lengths, and the DITTO paper's offline metrics (latent distance of the policy's own imagined
rollouts from expert starts, expert action prediction accuracy) where the policy has a world
model. Writes ``evaluation.json`` into the run directory (plus a row of ``evaluations.jsonl``
and TensorBoard scalars ``real/...`` at the evaluated checkpoint's step, which ``wmil plot``
draws on the curves) and, with ``video``, GIF or MP4 videos of the first episodes.

Episodes run in a gymnasium vector env of ``n_envs`` copies (one copy is the plain case).
Episode i is reset with seed ``seed + i`` whichever copy runs it, so the envs wmil builds give
the same episodes for any ``n_envs``. The policy acts for all copies in one batched forward pass
(``act_batch``, one row of recurrent state per copy); greedy actions are the same as one copy's
up to the rounding of batched products, sampled ones are drawn in another order. Episodes are assigned when they start and every assigned episode runs
to its end, so fast-ending episodes are not over-represented.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from wmil.errors import UserError
from wmil.runs import write_text_atomic
from wmil.progress import progress_bar

#: Evaluation episodes use seeds far from those of recorded data (0…) and demos (10000…).
EVAL_SEED = 1_000_000


@dataclass
class EpisodeResult:
    """One finished evaluation episode (``frames``: T+1 RGB frames when recorded, else empty)."""

    index: int
    total: float = 0.0
    steps: int = 0
    success: Optional[float] = None  # info["is_success"] at the last step, when the env reports it
    reached: bool = False            # is_success at any step
    frames: list = field(default_factory=list)


def _env_config(policy, env_id: Optional[str], env_kwargs: Optional[dict], video: bool):
    """The EnvConfig to evaluate on: the one recorded with the expert data, with ``env_id`` and
    ``env_kwargs`` applied, rendering RGB frames when a video is wanted."""
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
    kwargs = {**base.make_kwargs(), **(env_kwargs or {})}
    if video and (base.pixels is None or base.is_ale) and "render_mode" not in kwargs:
        # Pixel envs render already; vector-observation and ALE envs must be asked to.
        kwargs["render_mode"] = "rgb_array"
    return EnvConfig(base.env_id, pixels=base.pixels, grayscale=base.grayscale,
                     max_episode_steps=base.max_episode_steps, kwargs=kwargs)


def _check_spaces(observation_space, action_space, policy, env_id: str) -> None:
    from wmil.data.dataset import spec_from_spaces

    spec = spec_from_spaces(observation_space, action_space, f"environment {env_id}")
    if (spec.obs_shape, spec.action_dim, spec.discrete) != (policy.spec.obs_shape, policy.spec.action_dim, policy.spec.discrete):
        raise UserError(f"environment {env_id} has obs {spec.obs_shape} and {'discrete' if spec.discrete else 'continuous'} "
                        f"actions ({spec.action_dim}), but the policy expects obs {policy.spec.obs_shape} and "
                        f"{'discrete' if policy.spec.discrete else 'continuous'} ({policy.spec.action_dim}); "
                        "evaluate on the environment the policy was trained for")


def _wrapped(make: Callable[[], Any], wrappers: Sequence[Callable]) -> Callable[[], Any]:
    def factory():
        env = make()
        for wrap in wrappers:
            env = wrap(env)
        return env

    return factory


def _vector_env(policy, env, env_id, env_kwargs, wrappers, n_envs: int, episodes: int, video: bool,
                protocol=None):
    """(vector env, env name, whether wmil owns it and closes it, the EnvConfig when wmil made it)."""
    import gymnasium as gym
    from gymnasium.vector import AutoresetMode, SyncVectorEnv, VectorEnv

    from wmil.envs.protocols import inner_wrapper, outer_wrappers

    if n_envs < 1:
        raise UserError(f"n_envs={n_envs}: must be at least 1")
    wrappers = list(wrappers or [])
    if isinstance(env, VectorEnv):
        if wrappers or env_id is not None or env_kwargs:
            raise UserError("a vector env is used as given: build it with your wrappers and kwargs, "
                            "and leave env_id, env_kwargs and wrappers unset")
        if protocol is not None and not protocol.standard:
            raise UserError("evaluation protocols (shifted starts, noise) need wmil to make the environment or a "
                            "single env / env factory of yours; a vector env is used as given")
        if n_envs not in (1, env.num_envs):
            raise UserError(f"n_envs={n_envs} but the vector env given has {env.num_envs} copies")
        return env, _env_name(env), False, None
    if env is not None and env_id is not None:
        raise UserError("give either env (an environment object or factory) or env_id, not both")
    config = None
    if env is not None and protocol is not None and not protocol.standard:
        # Your env: the protocol's wrappers go around it (the start shift reads its unwrapped state).
        shift = inner_wrapper(_env_name_of(env), protocol)
        wrappers = ([shift] if shift else []) + wrappers + outer_wrappers(protocol)
    if isinstance(env, gym.Env):
        if n_envs > 1:
            raise UserError(f"n_envs={n_envs} needs copies of the environment: pass a factory (a function that "
                            "returns a new env), an env id, or a gymnasium vector env instead of one env object")
        instance = env
        factory = _wrapped(lambda: instance, wrappers)
        owned = False
    elif callable(env):
        factory, owned = _wrapped(env, wrappers), True
    elif env is None:
        from wmil.envs import make_env

        config = _env_config(policy, env_id, env_kwargs, video)
        factory = _wrapped(functools.partial(make_env, config, protocol), wrappers)
        owned = True
    else:
        raise UserError(f"env must be a gymnasium Env, a vector env or a function returning an env; got "
                        f"{type(env).__name__}")
    # wmil resets every episode itself with its own seed (autoreset disabled), so episode i is the
    # same whichever copy runs it.
    copies = min(n_envs, episodes)
    envs = SyncVectorEnv([factory] * copies, autoreset_mode=AutoresetMode.DISABLED)
    return envs, _env_name(envs), owned, config


def _env_name_of(env) -> str:
    """The gymnasium id of an env object or factory (made once to read it)."""
    import gymnasium as gym

    instance = env if isinstance(env, gym.Env) else env()
    try:
        return getattr(instance.spec, "id", None) or type(instance.unwrapped).__name__
    finally:
        if instance is not env:
            instance.close()


def _env_name(envs) -> str:
    spec = getattr(envs, "spec", None) or getattr(getattr(envs, "envs", [None])[0], "spec", None)
    return getattr(spec, "id", None) or type(envs).__name__


def _info_at(infos: dict, key: str, k: int):
    """Copy ``k``'s value of ``key`` in a vector env's batched infos (None when absent)."""
    if key not in infos:
        return None
    mask = infos.get(f"_{key}")
    if mask is not None and not mask[k]:
        return None
    return infos[key][k]


def _render(envs, k: int, obs_k) -> np.ndarray:
    """The RGB frame of copy ``k``: the env's full render, else a pixel observation itself."""
    frame = envs.envs[k].render() if hasattr(envs, "envs") else envs.call("render")[k]
    if frame is None:
        obs_k = np.asarray(obs_k)
        if obs_k.dtype == np.uint8 and obs_k.ndim == 3:
            return obs_k
        raise UserError("the environment cannot render frames for a video: make it with render_mode='rgb_array'")
    return np.asarray(frame)


def run_episodes(envs, policies: Sequence, episodes: int, seed: int, deterministic: bool, record: int = 0,
                 bar=None) -> list[EpisodeResult]:
    """Run episodes ``0 … episodes-1`` (episode i reset with seed ``seed + i`` where the env lets
    wmil reset it) on vector env ``envs``: one policy acting for every copy through
    ``act_batch``, or one policy per copy (``policies[k]`` in copy k, each through ``act``);
    record RGB frames of the first ``record`` episodes. Returns the results in episode order.

    Autoreset modes: DISABLED (the envs wmil builds): finished copies are reset by wmil with the
    next episode's seed. NEXT_STEP (gymnasium's default): the step after an episode's end resets
    that copy (its action is ignored and its reward is not counted); the new episode continues
    the copy's generator, so only the first episode of each copy has a chosen seed. SAME_STEP: the
    end step already returns the next episode's first observation (``final_info`` holds the
    ended episode's info); videos are not supported there (the final frame is gone).
    """
    from gymnasium.vector import AutoresetMode

    n = envs.num_envs
    mode = envs.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
    if record and mode == AutoresetMode.SAME_STEP:
        raise UserError("videos need a vector env whose autoreset mode is NEXT_STEP or DISABLED (SAME_STEP drops "
                        "the last frame of each episode)")
    discrete = policies[0].spec.discrete
    batched = len(policies) == 1
    if not batched and len(policies) != n:
        raise ValueError(f"run_episodes: {len(policies)} policies for {n} environment copies (give 1 or {n})")
    first = np.zeros(n, dtype=bool)  # batched: copies whose episode starts with the next observation
    running: list[Optional[EpisodeResult]] = [None] * n
    done: dict[int, EpisodeResult] = {}
    next_index = 0

    def start(k: int, obs_k) -> None:
        nonlocal next_index
        if next_index >= episodes:
            running[k] = None  # an extra episode at the tail: run, never counted
            return
        running[k] = EpisodeResult(next_index)
        next_index += 1
        if batched:
            first[k] = True
        else:
            policies[k].reset()
        if running[k].index < record:
            running[k].frames.append(_render(envs, k, obs_k))

    seeds = [seed + i if i < episodes else None for i in range(n)]
    obs, infos = envs.reset(seed=seeds)
    for k in range(n):
        start(k, obs[k])
    pending_reset = np.zeros(n, dtype=bool)  # NEXT_STEP: the coming step resets these copies
    last_actions: list[Any] = [None] * n
    while len(done) < episodes:
        actions = []
        if batched:  # every copy in one pass; copies not in a counted episode get their row too
            chosen = policies[0].act_batch(obs, first, deterministic=deterministic)
            first[:] = False
        for k in range(n):
            if pending_reset[k] or running[k] is None:
                action = last_actions[k] if last_actions[k] is not None else envs.single_action_space.sample()
            else:
                action = chosen[k] if batched else policies[k].act(obs[k], deterministic=deterministic)
            last_actions[k] = action
            actions.append(action)
        batch = np.asarray(actions, dtype=np.int64) if discrete else np.stack(actions).astype(np.float32)
        obs, rewards, terminated, truncated, infos = envs.step(batch)
        finished = []
        for k in range(n):
            if pending_reset[k]:  # this step was the reset of copy k (NEXT_STEP)
                pending_reset[k] = False
                start(k, obs[k])
                continue
            episode = running[k]
            ended = bool(terminated[k] or truncated[k])
            if episode is not None:
                episode.total += float(rewards[k])
                episode.steps += 1
                step_info = infos
                if ended and mode == AutoresetMode.SAME_STEP:
                    step_info = infos.get("final_info", {})
                success = _info_at(step_info, "is_success", k)
                if success is not None:
                    episode.success = float(success)
                    episode.reached = episode.reached or bool(success)
                if episode.frames:
                    episode.frames.append(_render(envs, k, obs[k]))
            if ended:
                if episode is not None:
                    done[episode.index] = episode
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(mean_return=f"{np.mean([e.total for e in done.values()]):.1f}", refresh=False)
                finished.append(k)
        if mode == AutoresetMode.DISABLED and finished and len(done) < episodes:
            mask = np.zeros(n, dtype=bool)
            mask[finished] = True
            reset_seeds = [None] * n
            for j, k in enumerate(finished):
                index = next_index + j
                reset_seeds[k] = seed + index if index < episodes else None
            obs, _ = envs.reset(seed=reset_seeds, options={"reset_mask": mask})
            for k in finished:
                start(k, obs[k])
        elif mode == AutoresetMode.SAME_STEP:
            for k in finished:
                start(k, obs[k])
        else:
            pending_reset[finished] = True
    return [done[i] for i in range(episodes)]


def _load(policy_or_run, trust: bool = False):
    """(policy, run dir or None)."""
    if isinstance(policy_or_run, (str, os.PathLike)):
        from wmil.train.policy import load_policy

        return load_policy(policy_or_run, trust=trust), Path(policy_or_run)
    if not (hasattr(policy_or_run, "act") and hasattr(policy_or_run, "reset") and hasattr(policy_or_run, "spec")):
        raise UserError(f"evaluate_policy takes a run directory or a loaded policy (wmil.load_policy), got "
                        f"{type(policy_or_run).__name__}")
    return policy_or_run, None


def _convention(policy) -> str:
    """The evaluation action of the policy's algorithm ('sample' or 'greedy')."""
    algo = policy.run_config.get("algo")
    if not algo:
        return "greedy"
    from wmil.algos.base import algorithm_class

    return algorithm_class(algo).evaluation_act


def protocol_references(config, protocol, episodes: int, seed: int) -> dict:
    """``ref_min_score``/``ref_max_score`` under ``protocol``: the mean returns of a random policy
    and of the scripted expert (where the environment has one) on the evaluation's own episode
    seeds, so that 1 means "as good as the expert from the same shifted starts"."""
    from wmil.data.build import mean_return
    from wmil.data.experts import EXPERT_ENV_IDS
    from wmil.envs import EnvConfig

    if config.env_id not in EXPERT_ENV_IDS:
        return {}
    vector = EnvConfig(config.env_id, pixels=None, max_episode_steps=config.max_episode_steps) \
        if not config.is_ale else config
    return {"ref_min_score": mean_return(vector, "random", episodes, seed, protocol),
            "ref_max_score": mean_return(vector, "expert", episodes, seed, protocol),
            "ref_protocol": protocol.describe()}


def _checkpoint_step(run_dir: Path) -> Optional[int]:
    from wmil.runs import RunDir

    found = RunDir(run_dir, "policy").checkpoints()
    return int(found[-1].stem.split("_")[1]) if found else None


def evaluate_policy(policy_or_run, env=None, *, env_id: Optional[str] = None, env_kwargs: Optional[dict] = None,
                    wrappers: Optional[Sequence[Callable]] = None, n_envs: int = 1, episodes: int = 10,
                    seed: int = EVAL_SEED, video: bool = False, video_episodes: int = 1, video_format: str = "gif",
                    act: str = "auto", starts: str = "standard", action_noise: float = 0.0, obs_noise: float = 0.0,
                    offline: bool = True, progress: bool = True, out: Optional[str | os.PathLike] = None,
                    trust: bool = False) -> dict[str, Any]:
    """Score a policy in a real environment; returns the report (also written as ``evaluation.json``).

    ``policy_or_run``: a policy run directory or a loaded policy (``wmil.load_policy``).
    The environment is, in this order: ``env`` — a gymnasium ``Env`` (used as it is, one copy),
    a function returning a new env (``n_envs`` copies), or a gymnasium vector env (used as it
    is); else ``env_id`` with ``env_kwargs`` (``gym.make`` keyword arguments) through wmil's
    :func:`~wmil.envs.make_env`, with the pixel settings the policy was trained on; else the
    environment recorded with the expert data. ``wrappers`` (functions ``env -> env``) wrap
    every copy. ``n_envs > 1`` runs the episodes in a ``SyncVectorEnv``; the episodes and scores
    are the same as with one copy (see the module docstring).

    ``act``: 'sample' (a sample of the policy's action distribution), 'greedy' (its most likely
    action) or 'auto' (the algorithm's convention: sampled for the learners the DITTO authors
    evaluate that way, greedy for BC and VINS); a policy without a learned action distribution
    (BC trained with the 'mse' loss: ``policy.stochastic`` is False) acts with its mode under
    'sample' too, and the report's ``deterministic`` says so. ``starts``, ``action_noise``, ``obs_noise``: the
    covariate-shift protocol (:mod:`wmil.envs.protocols`); under a protocol other than the
    standard one, the expert-normalised score uses the scripted expert's and a random policy's
    returns under the same protocol, on the same episode seeds (``ref_*_score``), where the
    environment has a scripted expert.

    Writes ``evaluation.json`` (and videos with ``video``: the first ``video_episodes`` episodes,
    ``video_format`` 'gif' or 'mp4', every step at the env's ``render_fps``) into ``out``, or
    into the run directory when evaluating one. ``trust`` loads a run's checkpoint that needs
    unpickling (older versions; it can run code).
    """
    from wmil.envs.protocols import Protocol
    from wmil.eval.offline import offline_metrics
    from wmil.eval.video import FORMATS, frame_ms, frame_rate, write_video

    if episodes < 1:
        raise UserError(f"--episodes {episodes}: must be at least 1")
    if video and video_episodes < 1:
        raise UserError(f"--video-episodes {video_episodes}: must be at least 1")
    if video and video_format not in FORMATS:
        raise UserError(f"--video-format {video_format!r}: choose one of {', '.join(FORMATS)}")
    if act not in ("auto", "sample", "greedy"):
        raise UserError(f"--act {act!r}: choose auto, sample or greedy")
    protocol = Protocol(starts, float(action_noise), float(obs_noise))
    policy, run_dir = _load(policy_or_run, trust)
    if act == "auto":
        act = _convention(policy)
    # A policy without a learned distribution acts with its mode either way (the report says so).
    deterministic = act == "greedy" or not policy.stochastic
    out_dir = Path(out) if out else run_dir
    if video and out_dir is None:
        raise UserError("videos need a folder: pass out=DIR (or evaluate a run directory)")
    envs, env_name, owned, config = _vector_env(policy, env, env_id, env_kwargs, wrappers, n_envs, episodes, video,
                                                protocol)
    try:
        _check_spaces(envs.single_observation_space, envs.single_action_space, policy, env_name)
        policy.reset()
        policies = [policy]
        fps, fps_declared = frame_rate(envs.metadata)
        bar = progress_bar(episodes, f"evaluate {env_name}", progress, unit="ep")
        torch.manual_seed(seed)
        try:
            results = run_episodes(envs, policies, episodes, seed, deterministic, video_episodes if video else 0, bar)
        finally:
            bar.close()
    finally:
        if owned:
            envs.close()
    successes = [r.success for r in results if r.success is not None]
    ever = [float(r.reached) for r in results if r.success is not None]
    references = dict(policy.run_config)
    if not protocol.standard and config is not None:
        references.update(protocol_references(config, protocol, episodes, seed))
    report = summarize([r.total for r in results], [r.steps for r in results], successes, references, ever)
    report.update({"run": str(run_dir) if run_dir is not None else None, "env": env_name, "episodes": episodes,
                   "n_envs": envs.num_envs, "seed": seed, "act": act, "deterministic": deterministic,
                   "protocol": protocol.to_dict(), "algo": policy.run_config.get("algo")})
    if run_dir is not None:
        report["step"] = _checkpoint_step(run_dir)
    if offline and policy.run_config.get("expert"):
        report.update(offline_metrics(policy))
    if out_dir is None:
        return report
    out_dir.mkdir(parents=True, exist_ok=True)
    recorded = [r for r in results if r.frames]
    if recorded:
        report["videos"] = [str(write_video(r.frames, out_dir / "videos" / f"episode_{r.index}.{video_format}", fps,
                                            video_format)) for r in recorded]
        report["video_frames"] = [len(r.frames) for r in recorded]
        report["video_fps"] = fps
        report["video_frame_ms"] = frame_ms(fps, video_format)
        if not fps_declared:
            report["video_fps_note"] = "the environment declares no render_fps; 30 frames/s assumed"
    path = out_dir / "evaluation.json"
    write_text_atomic(path, json.dumps(report, indent=2))  # a kill never leaves half a report
    report["report_path"] = str(path)
    if run_dir is not None and out is None:
        log_evaluation(run_dir, report)
    return report


#: Report fields logged as ``real/<field>`` rows and TensorBoard scalars of a policy run.
REAL_KEYS = ("return_mean", "normalized_score", "success_rate", "success_any", "length_mean")


def log_evaluation(run_dir: str | os.PathLike, report: dict) -> None:
    """Append the real-environment scores of ``report`` to the run's ``evaluations.jsonl`` and its
    TensorBoard events (tags ``real/...``), at the step of the evaluated checkpoint."""
    step = report.get("step")
    if step is None:
        return
    row = {"step": int(step), **{f"real/{k}": float(report[k]) for k in REAL_KEYS if k in report},
           "episodes": report["episodes"], "env": report["env"]}
    with open(Path(run_dir) / "evaluations.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency; a broken install must not lose the report
        return
    writer = SummaryWriter(str(run_dir))
    try:
        for key, value in row.items():
            if key.startswith("real/"):
                writer.add_scalar(key, value, int(step))
    finally:
        writer.close()


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
        if run_config.get("ref_protocol"):
            out["ref_protocol"] = run_config["ref_protocol"]
    if successes:
        out["success_rate"] = float(np.mean(successes))
    if ever:
        out["success_any"] = float(np.mean(ever))
    return out
