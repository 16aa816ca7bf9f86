"""RL: random labelling — the forget images' prediction under their own condition is pulled onto the model's own
prediction under a condition they do not have, jointly with the remain loss (Golatkar et al., "Eternal Sunshine of
the Spotless Net", CVPR 2020; the diffusion form is SalUn's, Fan et al., ICLR 2024: ‖ε_θ(x_t | c′) − ε_θ(x_t | c)‖²
on the forget data, the c′ side without gradient as in SalUn's DDPM code).

Training the forget images *under* the wrong condition (the classifier recipe) would teach the other classes to draw
the forgotten one and leave its own condition untouched; the remap changes what the forgotten condition produces.
The wrong conditions are drawn from the remain batch's own conditions: other classes for class-conditional models,
other prompts for text-to-image ones — never a forgotten one (none of them, when several concepts are erased at
once), on every family alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..arguments import option
from ..data import Batch
from ..losses import per_sample_mse
from .base import (
    Phase,
    UnlearningMethod,
    family_device,
    random_remain_conditions,
    remain_terms,
    timestep_quartile_terms,
)
from .ft import FTConfig


@dataclass
class RLConfig(FTConfig):
    """Random labelling's hyperparameters: FT's, and the remain loss's weight."""

    remain_weight: float = option(1.0, "β, weight of the remain loss in the joint step.")

    def __post_init__(self):
        super().__post_init__()
        if self.remain_weight < 0:
            raise ValueError(f"remain_weight must be >= 0, got {self.remain_weight}.")


class RL(UnlearningMethod):
    name = "rl"
    paper = "Golatkar et al., Eternal Sunshine of the Spotless Net, CVPR 2020 (random labelling)"
    config_class = RLConfig
    masked = False

    @property
    def phases(self) -> tuple[Phase, ...]:
        return (
            Phase("joint", data=("forget", "remain"), masked=self.masked, max_grad_norm=self.config.max_grad_norm),
        )

    def loss(self, phase, model, batch: dict[str, Batch], *, step, total_steps, reduce_sum, num_processes):
        if phase.name != "joint":
            raise ValueError(f"{type(self).__name__} has no phase {phase.name!r}.")
        forget, remain = batch["forget"], batch["remain"]
        family = self.family
        x0 = family.encode(forget.images.to(family_device(model)))
        labels, timesteps = forget.labels.to(x0.device), forget.draw.timesteps.to(x0.device)
        x_t = family.noisy(x0, forget.draw)
        with torch.no_grad():
            target = family.predict(model, x_t, timesteps, random_remain_conditions(forget, remain).to(x0.device))
        per_sample = per_sample_mse(family.predict(model, x_t, timesteps, labels), target)
        terms = remain_terms(family, model, remain, self.config.label_dropout, self.config.remain_weight)
        terms.update(timestep_quartile_terms("forget_remap", per_sample, forget.draw.timesteps, family.num_timesteps))
        return {**terms, "loss": per_sample.mean() + terms["loss"], "forget_remap": per_sample.detach().mean()}
