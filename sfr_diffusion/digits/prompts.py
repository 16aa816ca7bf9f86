"""The digits SD's captions, and the prompts an erasure of one of its concepts is trained and judged on."""

from __future__ import annotations

from .data import DIGIT_NAMES

# `{name}` is "three", `{numeral}` is "3". The held-out phrasings are never trained on; samples for them measure
# whether the text encoder carries the concept beyond the exact training captions.
TRAIN_TEMPLATES = (
    "a handwritten digit {name}",
    "the number {numeral}",
    "the digit {name}",
    "a drawing of the number {name}",
    "{name}",
    "a {name} written by hand",
    "number {numeral}",
    "an image of a {name}",
)
HELD_OUT_TEMPLATES = (
    "a picture of the numeral {name}",
    "an image showing a {name}",
    "digit {numeral}, handwritten",
    "a scanned {name}",
)
# Blank images carry these captions, so the world has a neutral concept to remap an erased digit to.
NEUTRAL_PROMPTS = ("a blank image", "an empty square", "nothing at all")
NEUTRAL_PROMPT = NEUTRAL_PROMPTS[0]


def digit_prompts(digit: int, which: str = "train") -> list[str]:
    """The digits SD's prompts for one digit: the training captions ("train") or the held-out ones ("held_out")."""
    templates = {"train": TRAIN_TEMPLATES, "held_out": HELD_OUT_TEMPLATES}[which]
    return [t.format(name=DIGIT_NAMES[digit], numeral=digit) for t in templates]


def digit_of(concept: str) -> int | None:
    """The digit a concept names ("three", "3"), or None."""
    text = str(concept).strip().lower()
    if text in DIGIT_NAMES:
        return DIGIT_NAMES.index(text)
    return int(text) if text.isdigit() and int(text) < len(DIGIT_NAMES) else None


def digits_sd_prompts(concept: str) -> tuple[list[str], list[str]]:
    """(forget, remain) prompts for erasing `concept` from the digits SD: a digit's training captions and every
    other training caption (the neutral ones included, so the default anchor stays blank)."""
    from ..text_data import concept_prompts

    digit = digit_of(concept)
    forget = digit_prompts(digit) if digit is not None else concept_prompts(concept)
    remain = [p for d in range(len(DIGIT_NAMES)) if d != digit for p in digit_prompts(d)] + list(NEUTRAL_PROMPTS)
    return forget, remain
