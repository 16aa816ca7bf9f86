"""ESD: Erased Stable Diffusion, negative-guidance distillation (Gandikota et al., "Erasing Concepts from Diffusion
Models", ICCV 2023).

The model's prediction for the concept is pulled toward the frozen original's prediction *guided away* from it:
``ε_θ(x_t, c) → ε_θ₀(x_t, ∅) − η (ε_θ₀(x_t, c) − ε_θ₀(x_t, ∅))``. For class-conditional models the class label plays
the prompt's role and the null class the empty prompt's; each forget sample is guided away from its own condition,
so one run erases several concepts at once. ESD draws x_t by sampling the model from the prompt; here
x_t is the forget images noised at random timesteps, the data every method in this package shares.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..arguments import option
from ..data import Batch
from ..losses import per_sample_mse
from .base import MethodConfig, Phase, UnlearningMethod, encoded, family_device, timestep_quartile_terms


@dataclass
class ESDConfig(MethodConfig):
    """ESD's hyperparameters (its defaults)."""

    negative_guidance: float = option(1.0, "η, how far the target is guided away from the concept.")
    max_grad_norm: float | None = option(1.0, "Global-norm clipping (None: no clipping).")

    def __post_init__(self):
        super().__post_init__()
        if self.negative_guidance < 0:
            raise ValueError(f"negative_guidance must be >= 0, got {self.negative_guidance}.")
        self.check_grad_norms("max_grad_norm")


class ESD(UnlearningMethod):
    name = "esd"
    paper = "Gandikota et al., Erasing Concepts from Diffusion Models, ICCV 2023"
    config_class = ESDConfig

    @property
    def needs_original(self) -> bool:
        return True

    @property
    def phases(self) -> tuple[Phase, ...]:
        return (Phase("forget", data="forget", masked=False, max_grad_norm=self.config.max_grad_norm),)

    def original_targets(self, phase, batch: Batch) -> dict[str, torch.Tensor]:
        """``ε_θ₀(x_t, ∅) − η (ε_θ₀(x_t, c) − ε_θ₀(x_t, ∅))`` on the batch's noisy images, no gradient."""
        if phase.name != "forget":
            raise ValueError(f"ESD has no phase {phase.name!r}.")
        family = self.family
        x0 = encoded(family, batch, family_device(family.denoiser))
        labels, timesteps = batch.labels.to(x0.device), batch.draw.timesteps.to(x0.device)
        x_t = family.noisy(x0, batch.draw)
        conditional = self.original.predict(x_t, timesteps, labels)
        unconditional = self.original.predict(x_t, timesteps, torch.full_like(labels, family.null_class_id))
        return {"forget": unconditional - self.config.negative_guidance * (conditional - unconditional)}

    def loss(self, phase, model, batch: Batch, *, step, total_steps, reduce_sum, num_processes):
        target = self.original_targets(phase, batch)["forget"]
        family = self.family
        x0 = encoded(family, batch, family_device(model))
        labels, timesteps = batch.labels.to(x0.device), batch.draw.timesteps.to(x0.device)
        per_sample = per_sample_mse(family.predict(model, family.noisy(x0, batch.draw), timesteps, labels), target)
        terms = {"loss": per_sample.mean(), "forget_esd": per_sample.detach().mean()}
        terms.update(timestep_quartile_terms("forget_esd", per_sample, batch.draw.timesteps, family.num_timesteps))
        return terms
