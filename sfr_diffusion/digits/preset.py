"""The digits world's preset: its training data, the digits SD's prompts and anchor, and the bundled judge."""

from __future__ import annotations

from ..arguments import EvaluationArguments
from ..families import family_for
from ..presets import Preset
from . import is_digits_world
from .data import load_digits_dataset
from .prompts import NEUTRAL_PROMPT, digit_of, digits_sd_prompts


def judged_digits(family, concept: str) -> list[int]:
    """The digits FA is measured on: the erased class, or the digit a text concept names (none for others)."""
    if family.text_conditioned:
        digit = digit_of(concept)
        return [] if digit is None else [digit]
    return [family.resolve_class(concept)]


def evaluate_digits(pipeline, concept: str, settings: EvaluationArguments, seed: int = 0) -> dict:
    """FA/RA/FID-digits of a digits pipeline after (or before) erasing `concept`, by the bundled judge."""
    from .metrics import digits_world_metrics

    return digits_world_metrics(
        pipeline,
        judged_digits(family_for(pipeline), concept),
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
