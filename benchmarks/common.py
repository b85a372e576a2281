"""Shared helpers for benchmark scripts: the result stamp and Markdown tables."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent
#: Each task's world-model dataset recipe (datasets/).
WORLD_RECIPES = {"cartpole": "cartpole-world.yaml", "lunar": "lunar-world.yaml", "pendulum": "pendulum-world.yaml"}


def ensure_dataset(recipe: str) -> str:
    """Build the dataset of ``datasets/<recipe>`` unless it exists; its name."""
    from wmil.data import names
    from wmil.data.build import build_dataset, load_recipe

    config = load_recipe(ROOT / "datasets" / recipe)
    if not names.exists(config.name):
        build_dataset(config, progress=False)
    return config.name


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_capability() -> str:
    """The vector unit torch dispatches to and whether bf16 products are native, e.g.
    "AVX512, native bf16" or "AVX2, bf16 emulated": two machines of the same model name (both
    stamp "AMD EPYC") differ here, and a bf16 timing only counts on a native one."""
    import torch

    from wmil.precision import native_bf16

    native = native_bf16("cpu")
    bf16 = "bf16 unknown" if native is None else "native bf16" if native else "bf16 emulated"
    return f"{torch.backends.cpu.get_cpu_capability()}, {bf16}"


def stamp() -> str:
    """Date, commit, CPU, cores, torch version and the exact command, as Markdown lines."""
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                               cwd=Path(__file__).parent).stdout.strip()
        commit += " (with uncommitted changes)" if dirty else ""
    except OSError:
        commit = "unknown"
    command = " ".join(shlex.quote(a) for a in [Path(sys.executable).name] + sys.argv)
    return "\n".join([
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- commit: {commit}",
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, {cpu_capability()}",
        f"- torch {torch.__version__}, python {platform.python_version()}",
        f"- command: `{command}`",
    ])


def table(header: list[str], rows: list[list]) -> str:
    def fmt(x):
        return f"{x:,.1f}" if isinstance(x, float) else str(x)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def write(name: str, title: str, body: str, directory: Path = RESULTS, stamped: str | None = None) -> Path:
    """Write ``directory/name``; ``stamped``: a :func:`stamp` taken when the measurement started
    (a long run outlives commits made meanwhile), else one taken now."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"# {title}\n\n{stamped or stamp()}\n\n{body}\n")
    print(path.read_text())
    return path
