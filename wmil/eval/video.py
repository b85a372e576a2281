"""Episode videos: every step at the environment's own frame rate, as GIF or MP4.

An episode of T steps gives T+1 frames (the reset frame, then one after each step), shown for
``1 / render_fps`` seconds each, so a video plays in the episode's real time. GIF stores frame
delays in hundredths of a second, so the delay is rounded to the nearest 10 ms (CartPole's
50 fps is exactly 20 ms; ALE's 15 agent steps/s become 70 ms, 30 fps becomes 30 ms);
GIF writers also merge consecutive identical frames into one longer frame, so a GIF of a
still scene has fewer frames than steps while its total duration stays right. MP4 (H.264
through ``imageio-ffmpeg``) keeps every frame and the exact rate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from wmil.errors import UserError

FORMATS = ("gif", "mp4")
#: Used when the environment does not declare ``metadata["render_fps"]``.
FALLBACK_FPS = 30.0


def frame_rate(metadata: Optional[dict]) -> tuple[float, bool]:
    """(frames per second, declared): the env's ``render_fps`` when it gives one, else 30."""
    fps = (metadata or {}).get("render_fps")
    if fps is None or not np.isfinite(fps) or fps <= 0:
        return FALLBACK_FPS, False
    return float(fps), True


def frame_ms(fps: float, video_format: str) -> float:
    """Milliseconds each frame is shown in a ``video_format`` file at ``fps`` (GIF: 10-ms steps)."""
    exact = 1000.0 / fps
    return float(max(10, round(exact / 10) * 10)) if video_format == "gif" else exact


def as_rgb(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 from an RGB frame, a grey frame (H, W) or a channels-first observation."""
    frame = np.asarray(frame)
    if frame.ndim == 3 and frame.shape[0] in (1, 3) and frame.shape[-1] not in (1, 3):
        frame = np.transpose(frame, (1, 2, 0))  # (C, H, W) observation → (H, W, C)
    if frame.ndim == 3 and frame.shape[-1] == 1:
        frame = frame[..., 0]
    if frame.ndim == 2:
        frame = np.repeat(frame[..., None], 3, axis=-1)
    if frame.ndim != 3 or frame.shape[-1] != 3:
        raise UserError(f"cannot record a video frame of shape {frame.shape}; expected (H, W, 3) RGB")
    if frame.dtype != np.uint8:
        frame = np.clip(frame, 0, 255).astype(np.uint8)
    return frame


def write_video(frames: Sequence[np.ndarray], path: str | Path, fps: float, video_format: str = "gif") -> Path:
    """Write ``frames`` (each shown for 1/fps s) to ``path`` as ``video_format`` ('gif' | 'mp4')."""
    import imageio.v2 as imageio

    if video_format not in FORMATS:
        raise UserError(f"--video-format {video_format!r}: choose one of {', '.join(FORMATS)}")
    if not frames:
        raise UserError(f"{path}: no frames to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = [as_rgb(f) for f in frames]
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")  # a failed write leaves no half video behind
    try:
        if video_format == "gif":
            # imageio's GIF writer (Pillow) takes the per-frame duration in milliseconds and would
            # truncate it to GIF's 10-ms steps: round it ourselves.
            imageio.mimsave(tmp, rgb, duration=frame_ms(fps, "gif"), loop=0)
        else:
            _write_mp4(rgb, tmp, fps)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write_mp4(frames: list[np.ndarray], path: Path, fps: float) -> None:
    try:
        import imageio_ffmpeg  # noqa: F401  (imageio's FFMPEG plugin needs it)
    except ImportError:
        raise UserError("MP4 videos need the imageio-ffmpeg package (pip install imageio-ffmpeg); "
                        "or use --video-format gif") from None
    import imageio.v2 as imageio

    # H.264 in yuv420p needs even sizes: pad by one edge row/column instead of letting the writer
    # rescale every frame.
    h, w = frames[0].shape[:2]
    pad = ((0, h % 2), (0, w % 2), (0, 0))
    writer = imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264", pixelformat="yuv420p",
                                macro_block_size=1, ffmpeg_log_level="error")
    try:
        for frame in frames:
            writer.append_data(np.pad(frame, pad, mode="edge") if any(p[1] for p in pad) else frame)
    finally:
        writer.close()
