"""What every unlearning method provides to the trainer: a config, an ordered schedule of phases, a loss per phase."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

import torch

from ..adapters import WithoutAdapters, has_adapters
from ..data import Batch
from ..families import copy_in_dtype
from ..losses import per_sample_mse
from ..saliency import Mask
from ..validation import check_field_values


@dataclass(frozen=True)
class Phase:
    """One optimizer step of an iteration: which data it draws, whether the saliency mask and clipping apply."""

    name: str
    data: str | tuple[str, ...]  # "forget", "remain", or a tuple of both: the loss then gets a dict of batches
    masked: bool
    max_grad_norm: float | None


@dataclass
class MethodConfig:
    """Base of method configs: serialisable; every field is checked against its annotation (finite floats, whole
    integers) before the subclass's own checks in ``__post_init__``, which call ``super().__post_init__()`` first."""

    def __post_init__(self):
        check_field_values(self)

    def to_dict(self) -> dict:
        return asdict(self)

    def check_grad_norms(self, *names: str) -> None:
        """Clipping norms must be positive, or None for no clipping."""
        for name in names:
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 or None, got {value}.")

    def check_label_dropout(self) -> None:
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}.")

    @classmethod
    def from_dict(cls, values: dict) -> MethodConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown {cls.__name__} fields {unknown}; valid fields are {sorted(known)}.")
        return cls(**values)


class UnlearningMethod:
    """A method: a config, phases, and ``loss(phase, ...)`` returning named terms (``loss`` is optimised)."""

    name: ClassVar[str]
    paper: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]]

    def __init__(self, config: MethodConfig, family, *, anchor: str | None = None):
        """`anchor`: the condition a remap targets when the config names none (for text-to-image models the
        preset's or data's anchor prompt); methods without a remap target ignore it."""
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}."
            )
        self.config, self.family = config, family

    @classmethod
    def check_config(cls, config: MethodConfig, family) -> None:
        """Refuse, before any data or model work, a config that cannot run on `family` (e.g. a remap target the
        model does not know). Configs check their own values; this checks them against the model."""

    @classmethod
    def picks_anchor(cls, config: MethodConfig) -> bool:
        """Whether this config remaps onto a condition it does not name, which :func:`sfr_diffusion.erase` then
        picks (the preset's anchor prompt; on class models, :func:`sfr_diffusion.anchors.farthest_kept_class`)."""
        return False

    @property
    def phases(self) -> tuple[Phase, ...]:
        raise NotImplementedError

    @property
    def uses_mask(self) -> bool:
        return any(phase.masked for phase in self.phases)

    def saliency_mask(self, fisher_forget: Mask, fisher_remain: Mask) -> Mask:
        """The mask of masked phases, from the diagonal Fisher of the original model on each set."""
        raise NotImplementedError(f"{type(self).__name__} has masked phases but defines no saliency mask.")

    def loss(
        self,
        phase: Phase,
        model: torch.nn.Module,
        batch: Batch,
        *,
        step: int,
        total_steps: int,
        reduce_sum: Callable[[torch.Tensor], torch.Tensor],
        num_processes: int,
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def timestep_quartile_terms(
    prefix: str, per_sample: torch.Tensor, timesteps: torch.Tensor, num_timesteps: int
) -> dict[str, torch.Tensor]:
    """Mean loss per quarter of the timestep range (NaN where a quarter has no sample in this batch).

    Erasure strength varies with t, so it is logged per quartile. All four keys are always present, so every process
    reports the same terms (collectives must match across processes).
    """
    quartile = (timesteps.to(per_sample.device) * 4 // num_timesteps).clamp(max=3)
    values = per_sample.detach().float()
    return {
        f"{prefix}_q{q + 1}": values[quartile == q].mean()
        if (quartile == q).any()
        else values.new_tensor(float("nan"))
        for q in range(4)
    }


def family_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def frozen_original(family) -> torch.nn.Module:
    """θ₀, the original denoiser, for targets that must not move with training.

    When the denoiser trains LoRA adapters, θ₀ is the denoiser itself with its adapters switched off (no copy: see
    :mod:`sfr_diffusion.adapters`). Otherwise a frozen copy, in the weight dtype under mixed precision (a frozen part,
    like the VAE), so it costs half the memory of the fp32 trainable weights."""
    if has_adapters(family.denoiser):
        return WithoutAdapters(family.denoiser)
    return copy_in_dtype(family.denoiser, family.frozen_dtype).requires_grad_(False).eval()


def remain_terms(
    family, model, batch: Batch, label_dropout: float, weight: float = 1.0, teacher: torch.nn.Module | None = None
) -> dict[str, torch.Tensor]:
    """The standard diffusion loss on remaining data, with the pretraining label dropout (keeps the null branch).

    With a `teacher` (the frozen original), the target is the teacher's prediction on the same noisy images and
    labels instead of the data's: the loss is zero where the model still predicts as the original did, so the remain
    step only undoes what the forget steps changed on the remaining data, instead of fitting the data anew."""
    x0 = family.encode(batch.images.to(family_device(model)))
    labels = batch.labels.to(x0.device)
    drop = batch.uniform.to(x0.device) < label_dropout
    labels = torch.where(drop, torch.full_like(labels, family.null_class_id), labels)
    if teacher is None:
        per_sample = family.diffusion_loss(model, x0, labels, batch.draw)
    else:
        x_t, timesteps = family.noisy(x0, batch.draw), batch.draw.timesteps.to(x0.device)
        with torch.no_grad():
            target = family.predict(teacher.to(x0.device), x_t, timesteps, labels)
        per_sample = per_sample_mse(family.predict(model, x_t, timesteps, labels), target)
    terms = {"loss": weight * per_sample.mean(), "remain_mse": per_sample.detach().mean()}
    terms.update(timestep_quartile_terms("remain_mse", per_sample, batch.draw.timesteps, family.num_timesteps))
    return terms


def random_remain_conditions(forget: Batch, remain: Batch) -> torch.Tensor:
    """For each forget sample, the condition of a remain sample picked by its own uniform draw (reproducible).

    Never a forgotten condition, however many concepts are erased: the remain set holds none of them (the data
    checks it, :func:`sfr_diffusion.sources.resolve_data`)."""
    picks = (forget.uniform * len(remain.labels)).long().clamp(max=len(remain.labels) - 1)
    return remain.labels[picks]
