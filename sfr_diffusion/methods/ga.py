"""GA: plain gradient ascent on the forget data's diffusion loss, nothing else — the baseline that shows what
forgetting costs when nothing protects the remaining data (Thudi et al., "Unrolling SGD: Understanding Factors
Influencing Machine Unlearning", EuroS&P 2022; the "GA" of SalUn's and SFR-on's tables)."""

from __future__ import annotations

from dataclasses import dataclass

from ..arguments import option
from ..data import Batch
from .base import MethodConfig, Phase, UnlearningMethod, family_device, timestep_quartile_terms


@dataclass
class GAConfig(MethodConfig):
    """Gradient ascent's hyperparameters."""

    alpha: float = option(1.0, "Weight of the ascent loss -α · mean_i ℓ_i.")
    max_grad_norm: float | None = option(1.0, "Global-norm clipping (None: no clipping).")

    def __post_init__(self):
        super().__post_init__()
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}.")
        self.check_grad_norms("max_grad_norm")


class GA(UnlearningMethod):
    name = "ga"
    paper = "Thudi et al., Unrolling SGD: Understanding Factors Influencing Machine Unlearning, EuroS&P 2022"
    config_class = GAConfig

    @property
    def phases(self) -> tuple[Phase, ...]:
        return (Phase("forget", data="forget", masked=False, max_grad_norm=self.config.max_grad_norm),)

    def loss(self, phase, model, batch: Batch, *, step, total_steps, reduce_sum, num_processes):
        if phase.name != "forget":
            raise ValueError(f"GA has no phase {phase.name!r}.")
        family = self.family
        x0 = family.encode(batch.images.to(family_device(model)))
        per_sample = family.diffusion_loss(
            model, x0, batch.labels.to(x0.device), batch.draw
        )  # real labels, no dropout
        terms = {"loss": -self.config.alpha * per_sample.mean(), "forget_mse": per_sample.detach().mean()}
        terms.update(timestep_quartile_terms("forget_mse", per_sample, batch.draw.timesteps, family.num_timesteps))
        return terms
