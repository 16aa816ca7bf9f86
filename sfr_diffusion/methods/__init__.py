"""The registry of unlearning methods: one method, one file, one config dataclass."""

from __future__ import annotations

from .base import MethodConfig, Phase, UnlearningMethod
from .ft import FT, FTConfig
from .sfr_on import SFROn, SFROnConfig

METHODS: dict[str, type[UnlearningMethod]] = {method.name: method for method in (SFROn, FT)}


def get_method_class(name: str) -> type[UnlearningMethod]:
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}; available: {sorted(METHODS)}.")
    return METHODS[name]


__all__ = [
    "FT",
    "FTConfig",
    "METHODS",
    "MethodConfig",
    "Phase",
    "SFROn",
    "SFROnConfig",
    "UnlearningMethod",
    "get_method_class",
]
