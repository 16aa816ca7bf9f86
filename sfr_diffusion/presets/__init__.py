"""Presets: what a known model world supplies when :func:`sfr_diffusion.erase` is not told.

A preset gives an erasure its default data (a labelled image set for class-conditional models; forget and remain
prompts for text-to-image ones), the anchor prompt a text concept is remapped to, and an evaluator that measures the
result. The digits world (``sfr_diffusion.digits``) is the one bundled today; this module is the only place outside
it that knows it exists.
"""

from __future__ import annotations

from pathlib import Path

from .preset import Preset


def preset_for(pipeline) -> Preset | None:
    """The preset of `pipeline`'s world, or None for a model no preset knows (reading it does not change it)."""
    from ..digits.preset import digits_preset

    return digits_preset(pipeline)


def learning_rate_for(family, preset: Preset | None) -> float:
    """The learning rate an erasure of a `family` model takes when not told: the rate `preset`'s world measured best
    for that family, else the family's own default (the official code's settings, meant for real checkpoints)."""
    if preset is not None and family.name in preset.learning_rates:
        return preset.learning_rates[family.name]
    return family.default_learning_rate


def resolve_model(name_or_path: str | Path) -> str | Path:
    """A bundled model's alias (``digits-ddpm``, ``digits-dit``, ``digits-sd``, ``digits-sd3``) → its folder;
    anything else as is."""
    from ..digits import resolve_model as resolve_digits_model

    return resolve_digits_model(name_or_path)


def bundled_aliases() -> list[str]:
    """The aliases :func:`resolve_model` knows."""
    from ..digits import BUNDLED_ALIASES

    return sorted(BUNDLED_ALIASES)


BUNDLED_SUFFIX = " (bundled digits world)"  # how an export names a bundled base model


def is_bundled(name_or_path: str | Path) -> bool:
    return str(name_or_path) in bundled_aliases()


def base_model_name(name_or_path: str | Path) -> str:
    """How an export records the model it was erased from: a bundled alias with its suffix, anything else as given."""
    return f"{name_or_path}{BUNDLED_SUFFIX}" if is_bundled(name_or_path) else str(name_or_path)


def loadable_name(base_model: str) -> str:
    """The name :func:`sfr_diffusion.load_pipeline` takes for an export's recorded base model (the inverse of
    :func:`base_model_name`)."""
    return base_model.removesuffix(BUNDLED_SUFFIX)


__all__ = [
    "Preset",
    "base_model_name",
    "bundled_aliases",
    "is_bundled",
    "learning_rate_for",
    "loadable_name",
    "preset_for",
    "resolve_model",
]
