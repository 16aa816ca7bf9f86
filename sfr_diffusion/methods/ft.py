"""FT: fine-tuning on the remaining data only — the simplest unlearning baseline, and the cost reference of one pass.

Catastrophic forgetting is its only mechanism for erasure (Golatkar et al., "Eternal Sunshine of the Spotless Net",
CVPR 2020, use it as the fine-tuning baseline; SFR-on's paper compares against it as "FT").
"""

from __future__ import annotations

from dataclasses import dataclass

from ..arguments import option
from ..data import Batch
from .base import MethodConfig, Phase, UnlearningMethod, remain_terms


@dataclass
class FTConfig(MethodConfig):
    """Fine-tuning's hyperparameters."""

    label_dropout: float = option(0.1, "Probability of the null class on remaining samples, as in pretraining.")
    max_grad_norm: float | None = option(1.0, "Global-norm clipping (None: no clipping).")

    def __post_init__(self):
        super().__post_init__()
        self.check_label_dropout()
        self.check_grad_norms("max_grad_norm")


class FT(UnlearningMethod):
    name = "ft"
    paper = "Golatkar et al., Eternal Sunshine of the Spotless Net, CVPR 2020 (fine-tuning baseline)"
    config_class = FTConfig

    @property
    def phases(self) -> tuple[Phase, ...]:
        return (Phase("remain", data="remain", masked=False, max_grad_norm=self.config.max_grad_norm),)

    def loss(self, phase, model, batch: Batch, *, step, total_steps, reduce_sum, num_processes):
        if phase.name != "remain":
            raise ValueError(f"FT has no phase {phase.name!r}.")
        return remain_terms(self.family, model, batch, self.config.label_dropout)
