"""Dataset names and where datasets live.

Datasets are Minari datasets named ``namespace/name-vN`` (namespace optional, may be nested)
and stored where Minari stores them: ``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``, so
``minari list local`` and ``minari.load_dataset`` see everything wmil writes.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from wmil.errors import UserError

_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9_-]*"
# Minari wants namespaces of at least two characters.
_NAMESPACE = r"[A-Za-z0-9_][A-Za-z0-9_-]+"
NAME_RE = re.compile(rf"^(?:{_NAMESPACE}/)*{_SEGMENT}-v\d+$")


def datasets_root() -> Path:
    """Minari's local dataset directory (honours ``MINARI_DATASETS_PATH``)."""
    root = os.environ.get("MINARI_DATASETS_PATH")
    return Path(root) if root else Path.home() / ".minari" / "datasets"


#: Longest dataset name part: file systems allow 255 bytes per path component (NAME_MAX on
#: Linux, macOS and Windows), and datasets are also built under a hidden folder of the root.
MAX_PART = 200
MAX_NAME = 1000


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid dataset id, else raise a one-line UserError."""
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        shown = name if not isinstance(name, str) or len(name) <= 80 else name[:77] + "..."
        raise UserError(
            f"invalid dataset name {shown!r}: use 'namespace/name-vN' with letters, digits, '_' "
            "and '-' only, namespaces of 2+ characters (e.g. 'cartpole/expert-v0'); no '..', no leading '/' or '-'"
        )
    longest = max(name.split("/"), key=len)
    if len(longest) > MAX_PART or len(name) > MAX_NAME:
        raise UserError(f"dataset name {name[:60]!r}… is too long for the file system: keep each part between '/' "
                        f"under {MAX_PART} characters (this one has {len(longest)}) and the whole name under {MAX_NAME}")
    return name


def dataset_dir(name: str) -> Path:
    """Directory of dataset ``name`` (it holds ``data/metadata.json`` and the HDF5 file)."""
    return datasets_root() / validate_name(name)


def exists(name: str) -> bool:
    return (dataset_dir(name) / "data" / "metadata.json").is_file()


def list_names() -> list[str]:
    """All complete local datasets (a dataset dir with ``data/metadata.json``), sorted."""
    root = datasets_root()
    if not root.is_dir():
        return []
    names = []
    for meta in root.rglob("data/metadata.json"):
        rel = meta.parent.parent.relative_to(root).as_posix()
        if not any(part.startswith(".") for part in rel.split("/")):
            names.append(rel)
    return sorted(names)


def resolve(name_or_path: str | os.PathLike) -> Path:
    """The ``data`` directory of a dataset given by name or by a filesystem path.

    A path may point at the dataset directory or its ``data`` directory.
    """
    path = Path(name_or_path)
    text = str(name_or_path)
    if NAME_RE.match(text) and ".." not in text:
        validate_name(text)  # a name too long for the file system says so
    try:
        for candidate in (path / "data", path):
            if (candidate / "metadata.json").is_file():
                return candidate
    except OSError as exc:  # a name too long for the file system, a path through a file, …
        raise UserError(f"{text[:80]}: not a readable dataset path ({exc.strerror})") from None
    if NAME_RE.match(text) and ".." not in text:
        data = datasets_root() / text / "data"
        if (data / "metadata.json").is_file():
            return data
        hint = ", ".join(list_names()[:8]) or "none"
        raise UserError(
            f"dataset {text!r} not found in {datasets_root()} (local datasets: {hint}); "
            "build it with 'wmil build-dataset' or set MINARI_DATASETS_PATH"
        )
    try:
        exists = path.exists()
    except OSError as exc:
        raise UserError(f"{text[:80]}: not a readable dataset path ({exc.strerror})") from None
    if exists:
        raise UserError(f"{path}: not a Minari dataset (no data/metadata.json inside)")
    validate_name(text)  # raises with the naming rule
    raise AssertionError("unreachable")
