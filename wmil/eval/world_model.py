"""``wmil evaluate-model``: open-loop prediction quality of a trained world model.

Observe ``context`` steps of held-out episodes, imagine the next 15 with the logged actions,
decode, and compare with the truth at horizons 1, 5 and 15, against the naive baseline
"repeat the last observed observation". For pixel models an image strip (truth row over
prediction row) is saved as PNG and, with ``--video``, a GIF/MP4 of real frames beside the
model's, from the same start (:func:`save_open_loop_video`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from wmil.errors import UserError
from wmil.runs import RunDir, from_config, write_text_atomic
from wmil.data.dataset import MixedSampler, load_all
from wmil.nets.grid import is_grid
from wmil.train.world_model import load_world_model
from wmil.world_models.base import HORIZONS, open_loop_errors


def evaluate_world_model(run_dir: str | os.PathLike, datasets: Optional[Sequence[str]] = None, batches: int = 8,
                         context: int = 10, seed: int = 0, expert: Optional[str] = None,
                         reward_features: str = "deter", horizon: int = 15, trust: bool = False,
                         video: bool = False, video_format: str = "gif") -> dict:
    """Open-loop errors of the world model of ``run_dir`` on held-out episodes (or ``datasets``);
    with ``expert`` (a dataset name or path), the reward check of :mod:`wmil.eval.reward_check`
    on its episodes; for image models an image strip and, with ``video``, a GIF/MP4 of real frames
    beside the model's (:func:`save_open_loop_video`). Writes ``open_loop.json`` into the run.
    ``trust`` loads a checkpoint that needs unpickling (older versions; can run code)."""
    model = load_world_model(run_dir, trust=trust)
    config = model.run_config
    if datasets:
        views = load_all(datasets)
        if views[0].spec.to_dict() != config["spec"]:
            raise UserError(f"dataset {views[0].name} does not match the model's spaces {config['spec']}")
    else:
        views = from_config(RunDir(run_dir, "world_model"), lambda: [
            v for _, v in (d.split(config["train"]["validation_fraction"], seed=config["train"]["seed"])
                           for d in load_all(config["datasets"])) if len(v)])
        if not views:
            raise UserError(f"{run_dir}: the run has no held-out episodes; pass --dataset to evaluate on")
    length = context + max(HORIZONS)
    torch.manual_seed(seed)
    sampler = MixedSampler(views, 32, length, seed=seed, pad=False)
    totals: dict[str, list[float]] = {}
    first = None
    per_dim: list[tuple[torch.Tensor, torch.Tensor]] = []
    for _ in range(batches):
        batch = sampler.sample()
        first = first or batch
        for k, v in open_loop_errors(model, batch, context).items():
            totals.setdefault(k, []).append(v)
        if not model.spec.pixels:
            per_dim.append(_per_dimension(model, batch, context))
    report = {k: float(np.mean(v)) for k, v in totals.items()}
    if per_dim:
        # One coordinate can dominate the MSE (e.g. LunarLander's binary leg contacts): show each.
        report["per_dim_mse_15_steps"] = torch.stack([m for m, _ in per_dim]).mean(0).tolist()
        report["per_dim_naive_mse_15_steps"] = torch.stack([n for _, n in per_dim]).mean(0).tolist()
    report.update({"run": str(run_dir), "context": context, "windows": batches * 32,
                   "datasets": [v.name for v in views]})
    if model.spec.pixels and is_grid(tuple(model.spec.obs_shape)):
        report.update(start_recall(model, views, seed=seed))
    if expert is not None:
        from wmil.data.dataset import load
        from wmil.eval.reward_check import reward_check

        report.update(reward_check(model, load(expert), features=reward_features, horizon=horizon, seed=seed))
        report.update({"reward_check/expert": str(expert), "reward_check/features": reward_features,
                       "reward_check/horizon": horizon})
    run = RunDir(run_dir, "world_model")
    if model.spec.pixels:
        report["strip_path"] = str(save_strip(model, first, context, run.path / "open_loop_strip.png"))
        if video:
            report["video_path"] = str(save_open_loop_video(model, first, context, run.path / f"open_loop.{video_format}",
                                                            video_format))
    elif video:
        raise UserError(f"{run_dir}: --video shows image predictions; this model's observations are vectors "
                        f"{tuple(model.spec.obs_shape)}")
    path = run.path / "open_loop.json"
    write_text_atomic(path, json.dumps(report, indent=2))  # a kill never leaves half a report
    report["report_path"] = str(path)
    return report


#: Steps after an episode's first observation at which :func:`start_recall` reports.
RECALL_STEPS = (0, 1, 2, 5, 10, 20)


@torch.no_grad()
def start_recall(model, views, steps: Sequence[int] = RECALL_STEPS, episodes: int = 64, seed: int = 0) -> dict:
    """Per channel of a binary grid image: the recall of its 'on' cells in the reconstruction of
    the filter's posterior, ``k`` steps after each episode's first observation, on up to
    ``episodes`` episodes of ``views`` long enough for the last step (the filter starts afresh at
    the first observation, as a deployed policy's does). A cell counts as shown when the decoded
    value is past the midpoint (probability ½ for a Bernoulli decoder). Keys
    ``start_recall/c{channel}_t{k}``; NaN where no cell of that channel is on."""
    length = max(steps) + 1
    obs, prev, first = [], [], []
    for view in views:
        arrays = view.aligned
        for e in np.flatnonzero(arrays.n_obs >= length)[:max(episodes - len(obs), 0)]:
            rows = slice(int(arrays.offsets[e]), int(arrays.offsets[e]) + length)
            obs.append(torch.from_numpy(arrays.obs[rows]) if arrays.obs is not None
                       else torch.from_numpy(view.observations(e, 0, length)))
            prev.append(torch.from_numpy(arrays.prev_action[rows]))
            first.append(torch.from_numpy(arrays.is_first[rows]))
    if not obs:
        return {}
    device = next(iter(model.parameters())).device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        posterior, _ = model.observe(torch.stack(obs).to(device), torch.stack(prev).to(device),
                                     torch.stack(first).to(device))
        shown = model.decode(model.features(posterior, "sample")) > 0                    # (B, T, C, H, W)
    truth = torch.stack(obs).to(device) > 127
    hits, on = (shown & truth).sum((0, 3, 4)).float(), truth.sum((0, 3, 4)).float()   # (T, C)
    recall = hits / on
    out = {f"start_recall/c{c}_t{k}": float(recall[k, c]) for k in steps for c in range(recall.shape[1])}
    out["start_recall/episodes"] = len(obs)
    return out


@torch.no_grad()
def _per_dimension(model, batch, context: int, horizon: int = 15) -> tuple[torch.Tensor, torch.Tensor]:
    """MSE per observation coordinate over the 15 imagined steps: (model (D,), naive (D,))."""
    predicted = model.open_loop(batch, context, horizon)
    truth = model.preprocess_obs(batch.obs[:, context:context + horizon])
    last = model.preprocess_obs(batch.obs[:, context - 1:context])
    return ((predicted - truth) ** 2).mean((0, 1)), ((last - truth) ** 2).mean((0, 1))


@torch.no_grad()
def save_strip(model, batch, context: int, path: Path, horizon: int = 15) -> Path:
    """Truth (top) and open-loop prediction (bottom) of the first window, side by side in time,
    each frame drawn by :func:`image_frame` (grey or RGB images at twice their size; object-channel
    grids, whatever their channel count, one colour per channel)."""
    from PIL import Image

    predicted = model.open_loop(batch, context, horizon)[0]                # (H, C, h, w) in [-0.5, 0.5]
    truth = batch.obs[0, context:context + horizon].float() / 255.0 - 0.5
    rows = []
    for frames in (truth, predicted):
        images = ((frames.clamp(-0.5, 0.5) + 0.5) * 255).round().to(torch.uint8).cpu().numpy()  # (H, C, h, w)
        size = max(2 * images.shape[-2], 80)
        rows.append(np.concatenate([image_frame(image, size=size) for image in images], axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    return path


#: Frame rate of open-loop videos (one model step per frame).
VIDEO_FPS = 5.0


def image_frame(image: np.ndarray, size: int = 160) -> np.ndarray:
    """A uint8 ``(C, H, W)`` observation (or prediction) as an RGB frame about ``size`` pixels
    high: grids of object channels (MinAtar) drawn one colour per channel, grey or RGB images
    enlarged with nearest-neighbour pixels."""
    from wmil.envs.minatar import render_grid
    from wmil.eval.video import as_rgb

    C, H, W = image.shape
    scale = max(1, size // H)
    if C not in (1, 3):
        return render_grid(image, cell=scale)
    rgb = as_rgb(image)
    return np.repeat(np.repeat(rgb, scale, 0), scale, 1)


@torch.no_grad()
def save_open_loop_video(model, batch, context: int, path: Path, video_format: str = "gif", windows: int = 4,
                         horizon: int = 15) -> Path:
    """A video of ``windows`` held-out windows (one per row): real frames on the left, the
    model's on the right. For the first ``context`` steps the model observes (its frame is the
    reconstruction of its posterior state); after that it imagines from the logged actions alone
    (open loop), marked by a red bar under its frame."""
    from wmil.eval.video import write_video
    from wmil.nets import postprocess_pixels

    n = min(windows, batch.shape[0])
    part = type(batch)(**{f: (v[:n] if isinstance(v, torch.Tensor) else v) for f, v in vars(batch).items()})
    posterior, _ = model.observe(part.obs[:, :context], part.prev_action[:, :context], part.is_first[:, :context])
    seen = model.decode(model.features(posterior))                          # (n, context, C, h, w)
    imagined = model.open_loop(part, context, horizon)                      # (n, horizon, C, h, w)
    model_frames = postprocess_pixels(torch.cat([seen, imagined], 1)).cpu().numpy()
    real_frames = part.obs[:, :context + horizon].cpu().numpy()
    frames = []
    for t in range(context + horizon):
        rows = []
        for i in range(n):
            real, pred = image_frame(real_frames[i, t]), image_frame(model_frames[i, t])
            blank = np.full((6, pred.shape[1], 3), 255, np.uint8)
            bar = np.array([220, 0, 0], np.uint8) * np.ones_like(blank) if t >= context else blank
            gap = np.full((real.shape[0] + 6, 8, 3), 255, np.uint8)
            rows.append(np.concatenate([np.concatenate([real, blank], 0), gap, np.concatenate([pred, bar], 0)], 1))
            rows.append(np.full((8, rows[-1].shape[1], 3), 255, np.uint8))
        frames.append(np.concatenate(rows[:-1], 0))
    return write_video(frames, path, VIDEO_FPS, video_format)
