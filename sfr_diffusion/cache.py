"""Where sfr-diffusion keeps what it can make again: generated training images, assembled and retrained models."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$SFR_DIFFUSION_CACHE, else $XDG_CACHE_HOME/sfr_diffusion (~/.cache/sfr_diffusion)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sfr_diffusion"
    return Path(os.environ.get("SFR_DIFFUSION_CACHE", default))
