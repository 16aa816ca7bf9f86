"""Shared by the benchmark scripts: the erasure target, the machine, the commit and BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

# "Forgotten" is the library's rule (FA ≤ 1% with RA within 1 point of the base model, held at every later
# evaluation); the benchmark scripts import it from here.
from sfr_diffusion.forgetting import FA_TARGET, RA_TOLERANCE, held_for, is_forgotten, iterations_to_forget

__all__ = [
    "FA_TARGET",
    "RA_TOLERANCE",
    "git_commit",
    "held_for",
    "is_forgotten",
    "iterations_to_forget",
    "machine_description",
    "write_section",
]


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:  # not Linux: keep platform's answer
        cpu = cpu or "unknown CPU"
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    threads = torch.get_num_threads()
    return (
        f"{cpu}, {os.cpu_count()} cores ({threads} torch threads), {device}; torch {torch.__version__}, "
        f"Python {platform.python_version()}"
    )


def git_commit(root: Path) -> str:
    """The short commit of `root`, marked when tracked files differ from it; "?" outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()  # fmt: skip
    except OSError:
        return "?"
    return out.stdout.strip() + (" (with uncommitted changes)" if dirty else "") if out.returncode == 0 else "?"


def write_section(path: Path, section: str) -> None:
    """Replace the ``<!-- name:start -->`` … ``<!-- name:end -->`` section of `path` (or append it)."""
    marker = section.split("\n", 1)[0][len("<!-- ") : -len(":start -->")]
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    header = "# Benchmarks\n\nEvery table here is written by a script in this repository, whose command it names.\n"
    text = path.read_text() if path.exists() else header
    if start in text and end in text:
        text = text[: text.index(start)] + section + text[text.index(end) + len(end) + 1 :]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
