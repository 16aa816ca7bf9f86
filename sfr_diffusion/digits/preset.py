"""The digits world's preset: its training data, the digits SD's prompts and anchor, and the bundled judge."""

from __future__ import annotations

from collections.abc import Sequence

from ..arguments import EvaluationArguments
from ..families import family_for
from ..presets.preset import Preset
from . import is_digits_world
from .data import load_digits_dataset
from .prompts import NEUTRAL_PROMPT, digit_of, digits_sd_prompts


def judged_digits(family, concepts: Sequence[str]) -> list[int]:
    """The digits FA is measured on: the erased classes, or the digits text concepts name (a text concept that
    names no digit, such as "a blank image", has none: only RA and FID are measured)."""
    if not family.text_conditioned:
        return sorted({family.resolve_class(concept) for concept in concepts})
    return sorted({digit for digit in map(digit_of, concepts) if digit is not None})


def evaluate_digits(pipeline, concepts: Sequence[str], settings: EvaluationArguments, seed: int = 0) -> dict:
    """FA/RA/FID-digits of a digits pipeline after (or before) erasing `concepts`, by the bundled judge."""
    from .metrics import digits_world_metrics

    return digits_world_metrics(
        pipeline,
        judged_digits(family_for(pipeline), concepts),
        samples_per_class=settings.eval_samples_per_class,
        guidance_scale=settings.guidance_scale,
        num_inference_steps=settings.num_inference_steps,
        seed=seed,
    )


DIGITS_PRESET = Preset(
    name="digits world",
    class_dataset=lambda: load_digits_dataset("train"),
    prompts=digits_sd_prompts,
    anchor=NEUTRAL_PROMPT,
    evaluate=evaluate_digits,
)


def digits_preset(pipeline) -> Preset | None:
    return DIGITS_PRESET if is_digits_world(pipeline) else None
