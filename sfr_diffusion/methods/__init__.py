"""The registry of unlearning methods: one method, one file, one config dataclass."""

from __future__ import annotations

from .base import MethodConfig, Phase, UnlearningMethod
from .esd import ESD, ESDConfig
from .ft import FT, FTConfig
from .ga import GA, GAConfig
from .rl import RL, RLConfig
from .salun import SalUn, SalUnConfig
from .sfr_on import SFROn, SFROnConfig

METHODS: dict[str, type[UnlearningMethod]] = {method.name: method for method in (SFROn, FT, GA, RL, SalUn, ESD)}


def get_method_class(name: str) -> type[UnlearningMethod]:
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}; available: {sorted(METHODS)}.")
    return METHODS[name]


__all__ = [
    "ESD",
    "ESDConfig",
    "FT",
    "FTConfig",
    "GA",
    "GAConfig",
    "METHODS",
    "MethodConfig",
    "Phase",
    "RL",
    "RLConfig",
    "SFROn",
    "SFROnConfig",
    "SalUn",
    "SalUnConfig",
    "UnlearningMethod",
    "get_method_class",
]
