"""Retrain: the digits world's gold standard for erasure, the bundled recipe trained without the forgotten digit.

An erased model is judged by how close it comes to a model that never saw the digit at all. Retraining takes minutes
on CPU, so each retrained model is kept in the cache (keyed by model, digit, steps, seed and recipe version) and
written atomically, so that an interrupted or concurrent run never leaves a half-written folder.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import AutoencoderKL

from ..cache import cache_dir
from ..export import save_pipeline_once
from .data import DIGIT_NAMES
from .models import DIGITS_PRETRAIN_STEPS, pretrain_digits_model
from .registry import shipped_path

RETRAIN_RECIPE_VERSION = 1  # bump when `pretrain_digits_model` changes what it trains
RETRAINABLE = ("ddpm", "dit", "sd", "sd3")


def retrained_path(name: str, forget_digit: int, *, steps: int = DIGITS_PRETRAIN_STEPS, seed: int = 0) -> Path:
    """Where the retrained model for (`name`, `forget_digit`) lives in the cache, built or not."""
    if name not in RETRAINABLE:
        raise ValueError(f"Retrain exists for the digits models {RETRAINABLE}, got {name!r}.")
    if forget_digit not in range(len(DIGIT_NAMES)):
        raise ValueError(f"forget_digit must be a digit 0..9, got {forget_digit!r}.")
    key = f"{name}-without-{forget_digit}-steps{steps}-seed{seed}-v{RETRAIN_RECIPE_VERSION}"
    return cache_dir() / "retrain" / key


def retrain(name: str, forget_digit: int, *, steps: int = DIGITS_PRETRAIN_STEPS, seed: int = 0) -> Path:
    """Train (or find in the cache) the digits `name` model ("ddpm", "dit", "sd", "sd3") without `forget_digit`.

    Only the denoiser is retrained: DiT, SD and SD3 keep the shared VAE (and SD and SD3 their frozen text encoders,
    SD3's rebuilt from their seeds), as an erasure does. Returns a folder that loads with ``load_pipeline``.
    """
    target = retrained_path(name, forget_digit, steps=steps, seed=seed)
    if (target / "model_index.json").exists():
        return target
    vae = None if name == "ddpm" else AutoencoderKL.from_pretrained(shipped_path("dit") / "vae")
    pipeline = pretrain_digits_model(name, vae=vae, exclude_digit=forget_digit, steps=steps, seed=seed)
    return save_pipeline_once(pipeline, target)
