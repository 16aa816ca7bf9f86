"""The digits world's preset: its training data, the digits SD's prompts and anchor, and the bundled judge."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..arguments import EvaluationArguments
from ..families import family_for
from ..presets.preset import Preset
from . import is_digits_world
from .data import load_digits_dataset
from .prompts import NEUTRAL_PROMPT, digit_of, digit_prompts, digits_sd_prompts
from .registry import judged_captions


def judged_digits(family, concepts: Sequence[str]) -> list[int]:
    """The digits FA is measured on: the erased classes, or the digits text concepts name (a text concept that
    names no digit, such as "a blank image", has none: only RA and FID are measured)."""
    if not family.text_conditioned:
        return sorted({family.resolve_class(concept) for concept in concepts})
    return sorted({digit for digit in map(digit_of, concepts) if digit is not None})


def fa_per_concept(family, concepts: Sequence[str], metrics: dict) -> dict[str, float | None]:
    """Each erased concept's own FA, read from the judge's ``per_class_accuracy`` (None for a text concept that
    names no digit)."""
    accuracy = metrics.get("per_class_accuracy") or {}
    per_concept = {}
    for concept in concepts:
        digits = judged_digits(family, [concept])
        per_concept[str(concept)] = accuracy.get(digits[0]) if digits else None
    return per_concept


def evaluate_digits(pipeline, concepts: Sequence[str], settings: EvaluationArguments, seed: int = 0) -> dict:
    """FA/RA/FID-digits of a digits pipeline after (or before) erasing `concepts`, by the bundled judge.

    The erased digits get ``settings.resolved_forget_samples_per_class`` samples each, the others
    ``settings.eval_samples_per_class``.
    """
    from .metrics import digits_world_metrics

    metrics = digits_world_metrics(
        pipeline,
        judged_digits(family_for(pipeline), concepts),
        samples_per_class=settings.eval_samples_per_class,
        forget_samples_per_class=settings.resolved_forget_samples_per_class,
        guidance_scale=settings.guidance_scale,
        num_inference_steps=settings.num_inference_steps,
        seed=seed,
    )
    return {**metrics, "FA_per_concept": fa_per_concept(family_for(pipeline), concepts, metrics)}


def _named_digit(concept: str) -> int:
    digit = digit_of(concept)
    if digit is None:
        raise ValueError(f"{concept!r} names no digit: the digits world has images of 'zero'..'nine' only.")
    return digit


def digit_images(concept: str):
    """The training split's images of the digit `concept` names (what an attacker of an erasure holds)."""
    digit = _named_digit(concept)
    dataset = load_digits_dataset("train")
    return dataset.select(np.flatnonzero(np.asarray(dataset["label"]) == digit))


def judged_digit_prompts(concept: str, family) -> list[str]:
    """Every prompt a digits text-to-image model of `family` is judged with for the digit `concept` names: its
    training captions, and the held-out phrasings where the model carries them (`registry.judged_captions`)."""
    digit = _named_digit(concept)
    return [prompt for kind in judged_captions(family) for prompt in digit_prompts(digit, kind)]


DIGITS_PRESET = Preset(
    name="digits world",
    class_dataset=lambda: load_digits_dataset("train"),
    prompts=digits_sd_prompts,
    anchor=NEUTRAL_PROMPT,
    evaluate=evaluate_digits,
    judge="the bundled digits classifier (sfr_diffusion/digits/assets/judge)",
    concept_images=digit_images,
    judged_prompts=judged_digit_prompts,
    # Measured with SFR-on's remap (BENCHMARKS.md, settings compared): the digits DDPM forgets by iteration 10-20 at
    # 1e-3 and keeps its unguided RA better than at 2e-3; the digits DiT forgets by iteration 10 at 5e-4 with less
    # damage at guidance 1 and 7.5 than at 1e-3; the digits SD forgets by iteration 10 at 1e-4 to 1e-3 and its
    # FID-digits ends lowest at 3e-4. The digits SD3 takes the SD rate (its own sweep: the methods comparison).
    learning_rates={"ddpm": 1e-3, "dit": 5e-4, "sd": 3e-4, "sd3": 3e-4},
)


def digits_preset(pipeline) -> Preset | None:
    return DIGITS_PRESET if is_digits_world(pipeline) else None
