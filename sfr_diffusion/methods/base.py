"""What every unlearning method provides to the trainer: a config, an ordered schedule of phases, a loss per phase."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

import torch

from ..data import Batch
from ..losses import per_sample_mse
from ..original import FrozenOriginal, PrecomputedOriginal, make_original
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

    def __init__(self, config: MethodConfig, family, *, anchor: str | None = None, original: str = "copy"):
        """`anchor`: the condition a remap targets when the config names none (for text-to-image models the
        preset's or data's anchor prompt); methods without a remap target ignore it. `original`: how a method whose
        losses need θ₀ has it (:func:`sfr_diffusion.original.make_original`: ``copy`` or ``precomputed``)."""
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}."
            )
        self.config, self.family = config, family
        self.original: FrozenOriginal | PrecomputedOriginal | None = (
            make_original(family, original) if self.needs_original else None
        )

    @property
    def needs_original(self) -> bool:
        """Whether a loss of this method takes targets from θ₀, the original denoiser (:meth:`original_targets`)."""
        return False

    def original_targets(self, phase: Phase, batch: Batch | dict[str, Batch]) -> dict[str, torch.Tensor]:
        """Everything `phase`'s loss needs of θ₀ for `batch`, by name, from :attr:`original` (no gradient); the loss
        asks for them itself. The trainer also calls this before the first step to precompute them."""
        return {}

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

    def check_mask(self, mask: Mask) -> None:
        """Refuse (or warn about) a whole mask that defeats the method; called once the mask is complete."""

    @property
    def mask_groups(self) -> int:
        """Groups of weights whose Fisher is measured one after another (each group's estimates exist only while
        it is measured). More than one only where :meth:`saliency_mask` decides each weight on its own estimates."""
        return 1

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


def encoded(family, batch: Batch, device: torch.device) -> torch.Tensor:
    """`batch`'s images in the denoiser's space, encoded once per batch: a loss and θ₀'s targets share them."""
    key = str(device)
    if key not in batch.encoded:
        batch.encoded[key] = family.encode(batch.images.to(device))
    return batch.encoded[key]


def remain_conditions(family, batch: Batch, label_dropout: float, device: torch.device) -> torch.Tensor:
    """The remain batch's conditions with the pretraining label dropout applied (the null condition where dropped)."""
    labels = batch.labels.to(device)
    drop = batch.uniform.to(device) < label_dropout
    return torch.where(drop, torch.full_like(labels, family.null_class_id), labels)


def original_remain_target(family, original, batch: Batch, label_dropout: float) -> torch.Tensor:
    """θ₀'s prediction on the remain batch's noisy images and (dropped-out) conditions: what a distilling remain
    step fits."""
    x0 = encoded(family, batch, family_device(family.denoiser))
    labels = remain_conditions(family, batch, label_dropout, x0.device)
    return original.predict(family.noisy(x0, batch.draw), batch.draw.timesteps.to(x0.device), labels)


def remain_terms(
    family, model, batch: Batch, label_dropout: float, weight: float = 1.0, target: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """The standard diffusion loss on remaining data, with the pretraining label dropout (keeps the null branch).

    With a `target` (the frozen original's prediction, :func:`original_remain_target`), the model fits it on the same
    noisy images and labels instead of the data: the loss is zero where the model still predicts as the original
    did, so the remain step only undoes what the forget steps changed on the remaining data, instead of fitting the
    data anew."""
    x0 = encoded(family, batch, family_device(model))
    labels = remain_conditions(family, batch, label_dropout, x0.device)
    if target is None:
        per_sample = family.diffusion_loss(model, x0, labels, batch.draw)
    else:
        x_t, timesteps = family.noisy(x0, batch.draw), batch.draw.timesteps.to(x0.device)
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
