"""Writing folders so that they appear whole or not at all: stage beside the target, then rename (STYLE rule 14)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

MAX_CONCEPT_NAME = 80  # of the concept part of a default export name: folder names and Hub repository ids stay short


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


def default_export_name(model: str | Path, concept: str | Sequence[str]) -> str:
    """``<model>-erase-<concept>``: the default export folder name, so that runs with other models or concepts never
    share a folder. Several concepts are joined by ``-`` (``digits-ddpm-erase-three-seven``); a name that would grow
    past :data:`MAX_CONCEPT_NAME` characters is cut there and ends in a hash of all of them, so it stays unique."""
    model_name = Path(str(model).rstrip("/\\")).name
    concepts = [concept] if isinstance(concept, str) else list(concept)
    name = "-".join(slug(c) for c in concepts)
    if len(name) > MAX_CONCEPT_NAME:
        digest = hashlib.sha256(json.dumps([str(c) for c in concepts]).encode()).hexdigest()[:8]
        name = f"{name[: MAX_CONCEPT_NAME - 9].rstrip('._-')}-{digest}"
    return f"{slug(model_name)}-erase-{name}"


def write_new_file(target: str | Path, text: str, *, overwrite: bool = False) -> Path:
    """Write `text` to the file `target` through a hidden sibling renamed into place; an existing file is replaced
    only with `overwrite` (a folder never)."""
    target = Path(target)
    if target.is_dir():
        raise IsADirectoryError(f"{target} is a folder; give a file path.")
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass --overwrite to replace it.")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_path(target)
    try:
        staging.write_text(text)
        staging.replace(target)
    finally:
        staging.unlink(missing_ok=True)
    return target
