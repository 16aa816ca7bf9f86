"""SalUn: saliency unlearning — random labelling (RL) restricted to the weights with the largest forget-loss
gradients (Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency in Both Image
Classification and Generation", ICLR 2024).

The mask keeps the top `mask_ratio` of weights by forget-data saliency, one global threshold, computed once on the
original model; the whole joint step is masked. SalUn ranks by ``|∇L_f|``; here by the diagonal Fisher of the forget
data (the mean squared batch gradient), which the trainer already estimates for SFR-on's mask.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..arguments import option
from ..saliency import top_fraction_mask
from .rl import RL, RLConfig


@dataclass
class SalUnConfig(RLConfig):
    """SalUn's hyperparameters: RL's, and its saliency mask's."""

    mask_ratio: float = option(0.5, "Share of weights the saliency mask keeps (SalUn's default).")
    mask_batches: int = option(4, "Forget batches used to estimate the saliency.")

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.mask_ratio <= 1:
            raise ValueError(f"mask_ratio must be in (0, 1], got {self.mask_ratio}.")
        if self.mask_batches < 1:
            raise ValueError(f"mask_batches must be >= 1, got {self.mask_batches}.")


class SalUn(RL):
    name = "salun"
    paper = (
        "Fan et al., SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency in Both Image "
        "Classification and Generation, ICLR 2024"
    )
    config_class = SalUnConfig
    masked = True

    def saliency_mask(self, fisher_forget, fisher_remain):
        return top_fraction_mask(fisher_forget, self.config.mask_ratio)
