"""Run directories: resolved config, metrics, TensorBoard events, checkpoints, resume.

    runs/<name>/
      config.yaml        the fully resolved config (kind, component names, every field), kept
                         true when a run is extended (``history`` records what changed and when)
      metrics.jsonl      one JSON object per logged step: {"step": …, "<group>/<name>": …}
      events.out.tfevents.*   TensorBoard (the scalars of metrics.jsonl, rewritten from it on resume)
      checkpoints/step_00001000.pt   model + optimiser + step + RNG state (atomic writes)
      .lock              held (flock) by the process that trains in the directory; holds its pid

Re-running with the same directory resumes from the newest readable checkpoint (a damaged
newest one is skipped with a warning): every config field must be unchanged except those in
:data:`MAY_CHANGE` (the step count, to extend a run), and metrics logged after the checkpoint
are dropped (they will be logged again), so the files read as one run. A directory without any
checkpoint holds no work: its config is replaced, so a start that failed (bad input) never
blocks the corrected command.

Loading never runs code from a file: checkpoints are read with ``torch.load(weights_only=True)``
and hold only tensors and plain Python values (the random states included). Checkpoints of
older versions pickled NumPy's random state; they load only with ``trust=True``
(``--trust-checkpoint``), which unpickles them and so can run code stored in them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import random
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch
import yaml

from wmil import __version__
from wmil.errors import UserError, warn

CHECKPOINT_FORMAT = 1
_CKPT_RE = re.compile(r"^step_(\d{8,})\.pt$")
_TMP_SUFFIX = ".tmp"
_EVENTS_PREFIX = "events.out.tfevents."

#: Config fields that may differ when a run is resumed (each change is recorded in the config's
#: ``history``): the step count (a finished run is extended by asking for more steps), what the
#: divergence guard does, and where the datasets / the world model live (moved directories; the
#: world model's identity is its ``world_model_checkpoint`` fingerprint, which must not change).
MAY_CHANGE = ("train.steps", "train.on_divergence", "dataset_paths", "world_model_run", "world_size", "init_from")

#: Config fields every run of a kind must have (loaders read them).
REQUIRED_FIELDS = {
    "world_model": ("model", "spec", "model_config", "train", "datasets"),
    "policy": ("algo", "spec", "algo_config", "train", "expert"),
}

TRUST_HINT = ("retrain, or if you trust where the file came from pass --trust-checkpoint (trust=True), "
              "which unpickles it and so can run code stored in it")


# ---- random states ---------------------------------------------------------------------------
def rng_state() -> dict:
    """Global random states (Python, NumPy legacy, torch CPU) for exact resume, as tensors and
    plain values so that a checkpoint loads with ``weights_only=True``."""
    key, words, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": {"bit_generator": str(key), "state": torch.from_numpy(words.astype(np.int64)),
                      "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    numpy = state["numpy"]
    if isinstance(numpy, dict):
        words = np.asarray(numpy["state"].numpy() if isinstance(numpy["state"], torch.Tensor) else numpy["state"])
        numpy = (numpy["bit_generator"], words.astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                 numpy["cached_gaussian"])
    np.random.set_state(numpy)  # a tuple: checkpoints of older versions (loaded with trust=True)
    torch.set_rng_state(state["torch"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fingerprint(state_dict: dict) -> str:
    """SHA-256 of a state dict's tensors (names, dtypes, shapes and bytes, in name order): it
    identifies a checkpoint's parameters, so a run that builds on a model can tell whether
    that model changed since (trained further, replaced)."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        value = state_dict[name]
        if not isinstance(value, torch.Tensor):
            continue
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


# ---- locks -------------------------------------------------------------------------------------
#: Locks this process holds, by resolved run path: a later RunDir of the same path in the same
#: process (a retry after a failed start) takes the lock over instead of blocking on itself.
_HELD: dict[str, Any] = {}


def _flock(file, exclusive: bool) -> bool:
    try:
        import fcntl
    except ImportError:  # not POSIX: no protection against a second process, but runs still work
        return True
    try:
        fcntl.flock(file, (fcntl.LOCK_EX | fcntl.LOCK_NB) if exclusive else fcntl.LOCK_UN)
        return True
    except BlockingIOError:
        return False


class RunDir:
    """A run directory of one ``kind`` ('world_model', 'policy', 'evaluation')."""

    def __init__(self, path: str | os.PathLike, kind: str):
        self.path = Path(path)
        self.kind = kind
        self._tb = None
        self._lock = None
        #: Step and divergence-guard state of the checkpoint a resumed run started from (None
        #: for a fresh start); the loop restores its guard from it.
        self.resumed: Optional[dict] = None
        self._truncated_at: Optional[int] = None

    # ---- lock --------------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the run's exclusive lock (UserError naming the holder's pid if another process
        has it). The OS releases it when the holder dies, so a killed run's lock is taken over."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"{self.path} is a file, not a run directory; choose another --out")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"{self.path}: cannot create the run directory ({exc.strerror})") from None
        key = str(self.path.resolve())
        previous = _HELD.pop(key, None)
        if previous is not None:
            _flock(previous, False)
            previous.close()
        lock = open(self.path / ".lock", "a+")
        if not _flock(lock, True):
            lock.seek(0)
            pid = lock.read().strip() or "?"
            lock.close()
            raise UserError(f"{self.path} is in use by pid {pid} (another wmil process trains there); "
                            "wait for it to finish or choose another --out")
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        _HELD[key] = self._lock = lock
        self._remove_stale_temporaries()

    def release(self) -> None:
        if self._lock is None:
            return
        key = str(self.path.resolve())
        if _HELD.get(key) is self._lock:
            del _HELD[key]
        _flock(self._lock, False)
        self._lock.close()
        self._lock = None

    def _remove_stale_temporaries(self) -> None:
        """Temporary files of writes that a killed process left (we hold the lock: none is live)."""
        for directory in (self.path, self.checkpoint_dir):
            if directory.is_dir():
                for p in directory.iterdir():
                    if p.name.startswith(".") and p.name.endswith(_TMP_SUFFIX):
                        p.unlink(missing_ok=True)

    # ---- config ------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    def exists(self) -> bool:
        return self.config_path.is_file()

    def read_config(self) -> dict:
        try:
            config = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{self.path}: not a wmil run directory (no config.yaml)") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{self.config_path}: unreadable ({exc})") from None
        except yaml.YAMLError as exc:
            raise UserError(f"{self.config_path}: unreadable ({str(exc).splitlines()[0]})") from None
        if not isinstance(config, dict) or "kind" not in config:
            raise UserError(f"{self.config_path}: field 'kind' missing; this is not a wmil run directory")
        self.check_kind(config)
        for name in REQUIRED_FIELDS.get(config["kind"], ()):
            if name not in config:
                raise UserError(f"{self.config_path}: field '{name}' missing; the run directory is damaged "
                                "or was written by another tool (restore config.yaml or retrain)")
        return config

    def check_kind(self, config: dict) -> None:
        if self.kind != "any" and config.get("kind") != self.kind:
            raise UserError(f"{self.path} holds a {config.get('kind')} run, not a {self.kind} run; choose another --out")

    def start_or_resume(self, config: dict, may_change: Iterable[str] = MAY_CHANGE,
                        trust: bool = False, defaults: Optional[dict[str, Any]] = None) -> Optional[dict]:
        """Lock the run and open it.

        An existing run with a readable checkpoint must have the same config except the fields
        in ``may_change`` (a UserError names the fields that differ); changed ones are recorded
        in config.yaml, and the newest readable checkpoint is returned (its step and guard state
        kept as :attr:`resumed`), with metrics after it dropped. A run without a checkpoint, or a new
        one, gets ``config`` written and empty metrics, and None is returned. ``trust`` loads
        checkpoints that need unpickling (see the module docstring). ``defaults`` maps a dotted
        field added in a later version to the value runs written before it had."""
        self.acquire()
        if self.exists():
            previous = self.read_config()
            self.check_kind(previous)
            checkpoint = self.load_checkpoint(trust=trust, fallback=True)
            if checkpoint is not None:
                step = int(checkpoint["step"])
                complete = self._check_resumable(previous, config, step, tuple(may_change), defaults or {})
                self.resumed = {"step": step, "divergence": checkpoint.get("divergence")}  # not the weights
                self.truncate_metrics(step)
                if complete:
                    self.release()  # nothing will be written
                return checkpoint
        self.write_config(config)
        self.truncate_metrics(0)
        return None

    def _check_resumable(self, previous: dict, config: dict, step: int, may_change: tuple[str, ...],
                         defaults: dict[str, Any]) -> bool:
        """Raise unless ``config`` may resume ``previous`` at ``step``; record allowed changes.
        True when the run is already complete."""
        new = _plain({"kind": self.kind, **config})
        differences = [(name, old, value) for name, old, value
                       in config_differences(previous, new, ignore=("wmil_version", "history"))
                       if not (old is _MISSING and name in defaults and defaults[name] == value)]
        blocking = [d for d in differences if d[0] not in may_change]
        if blocking:
            hint = ""
            if any(name.startswith("world_model_checkpoint") for name, _, _ in blocking):
                hint = " (the world model was trained further or replaced since this run started)"
            raise UserError(f"{self.path} holds a run with a different {_describe(blocking)}{hint}; "
                            "resume with the same settings, choose another --out, or delete that directory")
        steps = (new.get("train") or {}).get("steps")
        if isinstance(steps, int) and step > steps:
            raise UserError(f"{self.path} is already trained to step {step}, past --steps {steps}; "
                            f"pass --steps {step} or more, or choose another --out")
        if differences:
            record = {"at_step": step, "wmil_version": __version__,
                      "changed": {name: [old, value] for name, old, value in differences}}
            self.write_config({**new, "history": list(previous.get("history") or []) + [record]})
        if isinstance(steps, int) and step == steps:
            warn(f"{self.path} is already complete (step {step} of {steps}); nothing to train — "
                 "pass a larger --steps to extend it")
            return True
        return False

    def write_config(self, config: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.config_path, yaml.safe_dump({"kind": self.kind, "wmil_version": __version__,
                                                             **config}, sort_keys=False, allow_unicode=True))

    # ---- metrics -----------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def log(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self._truncated_at = None
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
        """Drop metric records logged after ``after_step`` (work lost since that checkpoint) and
        unreadable lines (the torn last line of a killed run), then rewrite the TensorBoard
        events from what is kept, so no step appears twice there either."""
        if self._truncated_at == after_step:
            return  # already done by this RunDir (trainers call it again after restoring)
        self._truncated_at = after_step
        kept = [r for r in self.read_metrics() if r["step"] <= after_step] if self.metrics_path.exists() else []
        if self.metrics_path.exists():
            write_text_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
        self._rewrite_events(kept)

    def _rewrite_events(self, records: list[dict]) -> None:
        """TensorBoard events = the records of metrics.jsonl: a new events file is written (and
        flushed) first, then every older one is removed; a kill in between leaves extra files
        that the next resume removes."""
        self.close_tensorboard()
        old = [p for p in self.path.glob(f"{_EVENTS_PREFIX}*")] if self.path.is_dir() else []
        if not records and not old:
            return
        if records:
            tb = self.tensorboard()
            if tb is not None:
                for record in records:
                    for key, value in record.items():
                        if key != "step":
                            tb.add_scalar(key, value, record["step"])
                tb.flush()
        for p in old:
            p.unlink(missing_ok=True)

    def read_metrics(self) -> list[dict]:
        """The logged records; an unreadable line (torn by a kill) is skipped with a warning."""
        if not self.metrics_path.exists():
            return []
        records, bad = [], []
        for number, line in enumerate(self.metrics_path.read_bytes().splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                    raise ValueError("no integer 'step'")
            except (ValueError, UnicodeDecodeError):
                bad.append(number)
                continue
            records.append(record)
        if bad:
            warn(f"{self.metrics_path}: skipped unreadable line(s) {', '.join(map(str, bad[:5]))}"
                 f"{' …' if len(bad) > 5 else ''} (a run killed while writing leaves a torn last line)")
        return records

    def close_tensorboard(self) -> None:
        if self._tb:
            self._tb.close()
        self._tb = None

    def close(self) -> None:
        """Flush TensorBoard and release the lock (the run may be opened again, by anyone)."""
        self.close_tensorboard()
        self.release()

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
        data = {"format": CHECKPOINT_FORMAT, "wmil_version": __version__, "kind": self.kind, "step": step, **payload}
        _atomic_write(path, lambda f: torch.save(data, f))
        for old in self.checkpoints()[:-keep]:
            old.unlink(missing_ok=True)
        return path

    def load_checkpoint(self, path: Optional[Path] = None, trust: bool = False,
                        fallback: bool = False) -> Optional[dict]:
        """The newest (or given) checkpoint, validated; None when the run has none.

        Tensors and plain values only, unless ``trust``. A truncated or corrupted newest
        checkpoint is skipped with a warning when ``fallback`` (resume), else it is an error
        that names the previous one; a checkpoint that needs unpickling is always an error."""
        found = [path] if path is not None else self.checkpoints()
        if not found:
            return None
        damaged = []
        for candidate in reversed(found):
            try:
                checkpoint = self._read_checkpoint(candidate, trust)
            except _Damaged as exc:
                damaged.append(f"{candidate.name} ({exc})")
                if fallback:
                    continue
                previous = found[-2] if len(found) > 1 else None
                where = (f"delete it to use the previous one ({previous.name})" if previous is not None
                         else "no earlier checkpoint is left; retrain")
                raise UserError(f"{candidate}: checkpoint is truncated or corrupted ({exc}); {where}") from None
            if damaged:
                warn(f"{self.checkpoint_dir}: skipped damaged checkpoint(s) {', '.join(damaged)}; resuming from "
                     f"{candidate.name}")
            return checkpoint
        raise UserError(f"{self.checkpoint_dir}: every checkpoint is truncated or corrupted ({', '.join(damaged)}); "
                        "nothing to resume from: delete the run directory and retrain")

    def _read_checkpoint(self, path: Path, trust: bool) -> dict:
        try:
            data = torch.load(path, map_location="cpu", weights_only=not trust)
        except pickle.UnpicklingError as exc:
            # wmil writes zip archives: a pickle refused inside one is foreign content; a file
            # that is no archive at all is damage (random bytes, a foreign format).
            if not trust and "weights only" in str(exc).lower() and zipfile.is_zipfile(path):
                raise UserError(f"{path}: checkpoint holds Python objects that only unpickling can restore (older "
                                "wmil versions stored NumPy random states that way; or the file was altered), "
                                f"so it was not loaded; {TRUST_HINT}") from None
            raise _Damaged(type(exc).__name__) from None
        except Exception as exc:  # zip/pickle errors of a truncated file
            raise _Damaged(type(exc).__name__) from None
        if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
            raise UserError(f"{path}: checkpoint format {data.get('format') if isinstance(data, dict) else '?'} "
                            f"is not {CHECKPOINT_FORMAT} (written by another wmil version); retrain or use that version")
        if data.get("kind") != self.kind:
            raise UserError(f"{path}: holds a {data.get('kind')} checkpoint, expected {self.kind}")
        if not isinstance(data.get("step"), int):
            raise UserError(f"{path}: checkpoint has no step number; it was not written by wmil")
        return data


def from_config(run: RunDir, build):
    """``build()`` (which reads fields of ``run``'s config); a missing or mistyped field becomes
    a one-line UserError naming config.yaml instead of a traceback."""
    try:
        return build()
    except UserError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        what = f"field {exc.args[0]!r} missing" if isinstance(exc, KeyError) and exc.args else f"{type(exc).__name__}: {exc}"
        raise UserError(f"{run.config_path}: invalid config ({what}); the run directory is damaged or from "
                        "another version; restore config.yaml or retrain") from None


class _Damaged(Exception):
    """A checkpoint file that cannot be read (truncated, corrupted)."""


# ---- config comparison ---------------------------------------------------------------------------
_MISSING = "<missing>"


def config_differences(old: Any, new: Any, ignore: tuple[str, ...] = (), prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``[(dotted field, old value, new value)]`` for every leaf that differs (NaN equals NaN)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in list(old) + [k for k in new if k not in old]:
            name = f"{prefix}.{key}" if prefix else str(key)
            if name in ignore:
                continue
            out += config_differences(old.get(key, _MISSING), new.get(key, _MISSING), ignore, name)
        return out
    same = old == new or (isinstance(old, float) and isinstance(new, float) and math.isnan(old) and math.isnan(new))
    return [] if same else [(prefix, old, new)]


def _describe(differences: list[tuple[str, Any, Any]], shown: int = 6) -> str:
    """``seed (0 → 1), model_config (12 fields differ)``: a field group with many differences
    (another model's config) is named once."""
    groups: dict[str, list] = {}
    for name, old, new in differences:
        groups.setdefault(name.split(".")[0], []).append((name, old, new))
    parts = []
    for group, items in groups.items():
        if len(items) > 3:
            parts.append(f"{group} ({len(items)} fields differ)")
        else:
            parts += [f"{name} ({_short(old)} → {_short(new)})" for name, old, new in items]
    more = f" and {len(parts) - shown} more" if len(parts) > shown else ""
    return ", ".join(parts[:shown]) + more


def _plain(config: dict) -> dict:
    """``config`` as config.yaml stores it (tuples become lists), so comparisons see values only."""
    return yaml.safe_load(yaml.safe_dump(config, sort_keys=False))


def _short(value: Any, width: int = 40) -> str:
    text = repr(value) if value is not _MISSING else "missing"
    return text if len(text) <= width else text[:width - 1] + "…"


def _tensors(obj: Any, prefix: str = ""):
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point():
            yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if key == "rng":
                continue
            yield from _tensors(value, f"{prefix}.{key}" if prefix else str(key))


# ---- atomic writes -------------------------------------------------------------------------------
def _atomic_write(path: Path, write) -> None:
    """Write through ``write(file)`` into a uniquely named temporary beside ``path``, flush it
    to disk, then rename it over ``path``: readers see the old file or the new one, never a
    part, and two writers never share a temporary."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # the rename itself survives a power cut only once the directory is synced
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (readers see the old file or the new one)."""
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' → CUDA when available, else CPU.

    On CPU the torch thread count is set by :func:`wmil.threads.configure_threads`: one thread
    unless ``WMIL_NUM_THREADS`` (the CLI's ``--threads``) or the user asks for more.
    """
    from wmil.threads import configure_threads

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine; use --device cpu or auto")
    if device == "cpu":
        configure_threads()
    try:
        return torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r}: use auto, cpu or cuda") from None
