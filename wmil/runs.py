"""Run directories: resolved config, metrics, TensorBoard events, checkpoints, resume.

    runs/<name>/
      config.yaml        the fully resolved config (kind, component names, every field)
      metrics.jsonl      one JSON object per logged step: {"step": …, "<group>/<name>": …}
      events.out.tfevents.*   TensorBoard (scalars of metrics.jsonl)
      checkpoints/step_00001000.pt   model + optimiser + step + RNG state (atomic writes)

Re-running with the same directory resumes from the newest readable checkpoint: metrics
logged after it are dropped (they will be logged again), so the files read as one run.
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import yaml

from wmil import __version__
from wmil.errors import UserError

CHECKPOINT_FORMAT = 1
_CKPT_RE = re.compile(r"^step_(\d{8,})\.pt$")


def rng_state() -> dict:
    """Global random states (Python, NumPy legacy, torch CPU) for exact resume."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class RunDir:
    """A run directory of one ``kind`` ('world_model', 'policy', 'evaluation')."""

    def __init__(self, path: str | os.PathLike, kind: str):
        self.path = Path(path)
        self.kind = kind
        self._tb = None

    # ---- config ------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    def exists(self) -> bool:
        return self.config_path.is_file()

    def read_config(self) -> dict:
        try:
            config = yaml.safe_load(self.config_path.read_text())
        except FileNotFoundError:
            raise UserError(f"{self.path}: not a wmil run directory (no config.yaml)") from None
        except yaml.YAMLError as exc:
            raise UserError(f"{self.config_path}: unreadable ({str(exc).splitlines()[0]})") from None
        if not isinstance(config, dict) or "kind" not in config:
            raise UserError(f"{self.config_path}: field 'kind' missing; this is not a wmil run directory")
        return config

    def check_kind(self, config: dict) -> None:
        if self.kind != "any" and config.get("kind") != self.kind:
            raise UserError(f"{self.path} holds a {config.get('kind')} run, not a {self.kind} run; choose another --out")

    def start_or_resume(self, config: dict, must_match: tuple[str, ...],
                        defaults: Optional[dict] = None) -> Optional[dict]:
        """Open the run: for an existing one, check ``must_match`` keys of its config equal
        ``config``'s and return its newest checkpoint (None if it has none yet); for a new one,
        write ``config`` and start empty metrics. Call :meth:`truncate_metrics` with the
        resumed step once the checkpoint is restored. ``defaults`` gives the value a key had
        in runs written before it was recorded."""
        if self.exists():
            previous = self.read_config()
            self.check_kind(previous)
            for key in must_match:
                before = previous.get(key, (defaults or {}).get(key))
                if before != config.get(key):
                    raise UserError(f"{self.path} holds a run with a different {key} ({before} vs "
                                    f"{config.get(key)}); choose another --out or delete that directory")
            checkpoint = self.load_checkpoint()
            if checkpoint is not None:
                return checkpoint
        self.write_config(config)
        self.truncate_metrics(0)
        return None

    def write_config(self, config: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(self.config_path, yaml.safe_dump({"kind": self.kind, "wmil_version": __version__, **config},
                                                            sort_keys=False))

    # ---- metrics -----------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def log(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        tb = self.tensorboard()
        if tb is not None:
            for key, value in metrics.items():
                tb.add_scalar(key, float(value), step)

    def tensorboard(self):
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is a dependency; a broken install must not stop training
                self._tb = False
                return None
            self._tb = SummaryWriter(str(self.path))
        return self._tb or None

    def truncate_metrics(self, after_step: int) -> None:
        """Drop metric records logged after ``after_step`` (work lost since that checkpoint)."""
        if not self.metrics_path.exists():
            return
        kept = [line for line in self.metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= after_step]
        _atomic_write_text(self.metrics_path, "".join(line + "\n" for line in kept))

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def close(self) -> None:
        if self._tb:
            self._tb.close()
        self._tb = None

    # ---- checkpoints -------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    def checkpoints(self) -> list[Path]:
        if not self.checkpoint_dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.checkpoint_dir.iterdir() if (m := _CKPT_RE.match(p.name))]
        return [p for _, p in sorted(found)]

    def save_checkpoint(self, step: int, payload: dict, keep: int = 3) -> Path:
        """Write ``payload`` atomically as the checkpoint of ``step``; keep the newest ``keep``."""
        for name, value in _tensors(payload):
            if not torch.isfinite(value).all():
                raise UserError(f"{self.path}: refusing to write checkpoint at step {step}: '{name}' holds NaN/inf")
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self.checkpoint_dir / f"step_{step:08d}.pt"
        tmp = path.with_suffix(".pt.tmp")
        torch.save({"format": CHECKPOINT_FORMAT, "wmil_version": __version__, "kind": self.kind, "step": step,
                    **payload}, tmp)
        os.replace(tmp, path)
        for old in self.checkpoints()[:-keep]:
            old.unlink(missing_ok=True)
        return path

    def load_checkpoint(self, path: Optional[Path] = None) -> Optional[dict]:
        """The newest (or given) checkpoint, validated; None when the run has none."""
        if path is None:
            found = self.checkpoints()
            if not found:
                return None
            path = found[-1]
        try:
            data = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # zip/pickle errors of a truncated file
            raise UserError(f"{path}: checkpoint is truncated or corrupted ({type(exc).__name__}); "
                            "delete it to resume from the previous one") from None
        if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
            raise UserError(f"{path}: checkpoint format {data.get('format') if isinstance(data, dict) else '?'} "
                            f"is not {CHECKPOINT_FORMAT} (written by another wmil version); retrain or use that version")
        if data.get("kind") != self.kind:
            raise UserError(f"{path}: holds a {data.get('kind')} checkpoint, expected {self.kind}")
        return data


def _tensors(obj: Any, prefix: str = ""):
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point():
            yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if key == "rng":
                continue
            yield from _tensors(value, f"{prefix}.{key}" if prefix else str(key))


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' → CUDA when available, else CPU.

    On CPU the torch thread count is capped at the cores this process may use, or set from
    ``WMIL_NUM_THREADS`` when given (the test suite uses 1: tiny models run faster that way).
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine; use --device cpu or auto")
    if device == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        wanted = os.environ.get("WMIL_NUM_THREADS")
        if wanted:
            torch.set_num_threads(max(1, int(wanted)))
        elif torch.get_num_threads() > cores:
            torch.set_num_threads(cores)
    try:
        return torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r}: use auto, cpu or cuda") from None
