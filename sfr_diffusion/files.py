"""Writing folders so that they appear whole or not at all: stage beside the target, then rename (STYLE rule 14)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path


def staging_path(target: Path, kind: str = "partial", pid: int | None = None) -> Path:
    """The hidden sibling ``.NAME.KIND-PID`` a process writes `target` through; the PID tells whose it is."""
    return target.with_name(f".{target.name}.{kind}-{os.getpid() if pid is None else pid}")


def write_once(target: str | Path, write: Callable[[Path], object]) -> Path:
    """Create the cache folder `target` with ``write(staging_folder)``, then rename it into place.

    For folders whose content is a pure function of their name (a cache key): when another process finished the
    same folder first, its copy is kept and ours discarded. An interrupted write leaves only a hidden staging folder,
    never something that looks complete.
    """
    target = Path(target)
    if target.exists():
        return target
    staging = staging_path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        write(staging)
        staging.rename(target)
    except OSError:
        if not target.exists():  # a real failure, not another process that got there first
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # only this process's own staging folder
    return target


def slug(text: str) -> str:
    """A folder-name form of a model or concept name: letters, digits, '.', '_' and '-'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.strip()).strip("._") or "model"


def default_export_name(model: str | Path, concept: str) -> str:
    """``<model>-erase-<concept>``: the default export folder name, so that runs with other models or concepts never
    share a folder."""
    model_name = Path(str(model).rstrip("/\\")).name
    return f"{slug(model_name)}-erase-{slug(concept)}"
