"""What the memory benchmarks share: resident-memory readings, a sampler that places the peak in time, and the
snapshot of the library that every measured process imports."""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def gib(value_bytes: float) -> float:
    return value_bytes / 2**30


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def rss_bytes(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/statm") as statm:  # pages: size, resident, ...
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssSampler(threading.Thread):
    """The process's resident memory every `interval` seconds, to place the peak in time. Reading ``/proc`` leaves
    ``ru_maxrss`` alone (resetting the kernel's high-water mark through ``clear_refs`` would not)."""

    def __init__(self, interval: float = 0.05):
        super().__init__(daemon=True)
        self.interval, self.samples, self.stopped = interval, [], threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.samples.append((time.perf_counter(), rss_bytes()))
            time.sleep(self.interval)

    def peak(self, start: float, end: float) -> int:
        return max((rss for t, rss in self.samples if start <= t <= end), default=0)


def snapshot_library(folder: Path, scripts: tuple[Path, ...] = ()) -> str:
    """Copy ``sfr_diffusion/`` (and `scripts`, into ``benchmarks/``) into `folder`, which the runs import from, so
    that all of them measure the same code even if the working tree changes meanwhile; returns the sha256 of the
    library copy's Python sources."""
    shutil.copytree(ROOT / "sfr_diffusion", folder / "sfr_diffusion", ignore=shutil.ignore_patterns("__pycache__"))
    if scripts:
        (folder / "benchmarks").mkdir()
        for script in scripts:
            shutil.copy2(script, folder / "benchmarks" / script.name)
    digest = hashlib.sha256()
    for path in sorted((folder / "sfr_diffusion").rglob("*.py")):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]
