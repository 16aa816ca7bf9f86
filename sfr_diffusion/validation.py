"""Checks that every config dataclass runs first: each field holds a value of its declared kind, and floats are finite.

``nan`` passes every comparison-based check (``nan < 0`` is False), so without this an ``alpha=nan`` would only fail
after the saliency mask, as a non-finite loss. ``int`` fields refuse ``2.5`` rather than truncating it.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import fields

# What a user can get wrong (a value, a path, a file, a missing extra): entry points show these as one line.
USER_ERRORS = (ValueError, OSError, ImportError, FloatingPointError)


def check_field_values(config) -> None:
    """Raise ``ValueError`` naming the first field whose value does not fit its annotation (``int``, ``float``,
    ``bool``, each optionally ``| None``); fields of other types are left to the config's own checks."""
    for field in fields(config):
        kinds = {part.strip() for part in str(field.type).split("|")}
        value = getattr(config, field.name)
        if value is None:
            if "None" not in kinds:
                raise ValueError(f"{field.name} must not be None.")
            continue
        if "str" in kinds:  # free-form fields (names, paths, prompts) are left to the config's own checks
            continue
        if "bool" in kinds:
            if not isinstance(value, bool):
                raise ValueError(f"{field.name} must be True or False, got {value!r}.")
        elif "int" in kinds and "float" not in kinds:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"{field.name} must be an integer, got {value!r}.")
        elif "float" in kinds:
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"{field.name} must be a number, got {value!r}.")
            if not math.isfinite(value):
                raise ValueError(f"{field.name} must be a finite number, got {value!r}.")


def one_line(error: BaseException) -> str:
    """An exception as one line: its message with line breaks folded (library messages often span several)."""
    text = " ".join(str(error).split())
    return text or type(error).__name__
