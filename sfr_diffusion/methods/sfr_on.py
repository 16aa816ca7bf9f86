"""SFR-on: Saliency-masked, adaptively weighted Forgetting then Remaining, online (arXiv 2409.19732, §4).

One iteration is two optimizer steps on **one** optimizer: a *forget* (fast) step on a forget batch, masked by the
forget-remain balanced saliency mask and clipped, then a *remain* (slow) step on a remain batch evaluated at the
weights the forget step produced. To first order the pair applies the forget direction pre-conditioned by
``(I + βH_r)^-1`` plus fine-tuning on the remaining data, without ever forming the Hessian.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..adapters import has_adapters
from ..arguments import option
from ..data import Batch
from ..losses import adaptive_weights, forget_weight, per_sample_mse, weighted_ascent_loss
from ..saliency import mask_density, saliency_mask
from .base import (
    MethodConfig,
    Phase,
    UnlearningMethod,
    encoded,
    family_device,
    original_remain_target,
    random_remain_conditions,
    remain_terms,
    timestep_quartile_terms,
)

logger = logging.getLogger(__name__)

FORGET_LOSSES = ("ascent", "remap", "remap_others")
# LoRA's Fisher pass measures the adapted base weights (SDXL: 955M), which otherwise take neither gradients nor Adam's
# moments: measured a quarter at a time, it stays within a tenth of a LoRA fine-tune's peak (BENCHMARKS.md).
LORA_MASK_GROUPS = 4
REMAIN_TARGETS = ("data", "original")


@dataclass
class SFROnConfig(MethodConfig):
    """SFR-on hyperparameters. Defaults are the official DDPM CIFAR-10 class-forgetting setting (α_0 = 10 with
    cosine decay, λ = 0.5, γ = 1, clipping 1.0 on both steps), except two choices measured on the digits world
    (BENCHMARKS.md): the forget loss is a remap (the family's default) and the remain step distils the frozen
    original instead of fitting the data (``remain_target``)."""

    forget_loss: str | None = option(
        None,
        "ascent: adaptive-weighted gradient ascent on the forget class's own loss (the paper's choice for classes); "
        "remap: pull the forget condition's prediction onto the frozen original's prediction for --remap_target; "
        "remap_others: onto the frozen original's prediction under a condition of the remain set, drawn per sample "
        "(another class, or a remain prompt). Remaps have a minimum, so their push fades once the concept is gone; "
        "they take the mean over the batch (the adaptive weights and --temperature shape ascent only). "
        "Default: remap, on every family (ascent collapses the digits DiT and leaves an artefact where the class "
        "was; measured in BENCHMARKS.md).",
        choices=FORGET_LOSSES,
    )
    alpha: float = option(10.0, "α_0, weight of the forget loss.")
    cosine_decay: bool = option(
        True, "Decay α_t = α_0 (1 + cos(π t / T)) / 2 over the run.", negative="--no_cosine_decay"
    )
    temperature: float = option(0.5, "λ of the adaptive forget weights w_i ∝ ℓ_i^(-λ); 0 gives plain ascent.")
    remain_weight: float = option(1.0, "β, weight of the remain loss.")
    gamma: float = option(1.0, "Saliency threshold on the Fisher ratio F_f / F_r.")
    use_mask: bool = option(True, "Apply the saliency mask to the forget step.", negative="--no_mask")
    mask_batches: int = option(4, "Batches of each set used to estimate the diagonal Fisher.")
    mask_groups: int | None = option(
        None,
        "Measure the Fisher of this many groups of weights one after another, at this many times the Fisher pass's "
        "compute: only one group's two estimates exist at a time (8 bytes a weight, the group's instead of all "
        "trained or adapted weights'). The mask is the same: each weight is decided on its own estimates. Default: "
        f"{LORA_MASK_GROUPS} when LoRA adapters train (the pass then measures base weights that nothing else holds "
        "gradients or moments for), else 1.",
    )
    forget_max_grad_norm: float | None = option(1.0, "Global-norm clipping of the forget step (None: none).")
    remain_max_grad_norm: float | None = option(1.0, "Global-norm clipping of the remain step (None: none).")
    remap_target: str | None = option(
        None,
        "Target of --forget_loss remap: a class name or id (class-conditional models; default: the kept class the "
        "original model tells farthest from the erased ones, sfr_diffusion.anchors) or an anchor prompt "
        "(text-to-image; default: the preset's anchor, e.g. 'a blank image' on the digits SD, else the empty "
        "prompt).",
        aliases=("--remap_class", "--anchor_concept"),
    )
    remain_target: str = option(
        "original",
        "What the remain step fits on the remain images: original, the frozen original's prediction on the same "
        "noisy images (zero loss where the model still predicts as the original did: the remain step only undoes "
        "what forgetting changed, and keeps unguided and strongly guided samples as they were; BENCHMARKS.md); "
        "data, the diffusion loss's own target (the paper's: it fine-tunes the model on the remain set anew).",
        choices=REMAIN_TARGETS,
    )
    label_dropout: float = option(
        0.1,
        "Probability of the null class on remain samples, as in pretraining, so the unconditional branch of "
        "classifier-free guidance stays trained. The forget step never drops labels.",
    )
    online: bool = option(
        True,
        "The fast-slow pair of steps ('on'); off sums the forget and remain losses into one joint step on both "
        "batches (with --temperature 0 and --no_mask: the paper's 'R').",
        negative="--no_online",
    )
    unconditional_forget: bool = option(
        False,
        "Remap losses: also erase the concept from the unconditional branch (the null class; the empty prompt), which "
        "sampling without a condition and guidance's own unconditional term use, and which the remap alone leaves "
        "drawing the concept as the original did. On the forget images that branch is pulled onto the frozen "
        "original's unconditional prediction guided away from the concept, eps0(x_t, null) - (eps0(x_t, c) - "
        "eps0(x_t, null)): ESD's target, given to the branch a model retrained without the concept never taught it. "
        "The price: guidance then pulls harder toward any embedding that draws the concept, and inverting the "
        "concept's embedding recovers it more easily (BENCHMARKS.md, 'The unconditional branch').",
    )
    adversarial_steps: int | None = option(
        None,
        "Robust SFR-on: before each forget step, this many signed-gradient steps move the forgotten condition's "
        "embedding (class-embedding rows; a text prompt's encoder hidden states) toward the concept with the model "
        "frozen, as the inversion attack does, and the forget loss is the mean of its value at the real condition "
        "and at that embedding (AdvUnlearn's idea for text). 0: off. Default: the family's, 6 on the DDPM (the "
        "inversion attack recovers less, at 2.7 times the training time), 3 on SD 1.x/2.x (less recovered, at 1.8 "
        "times the training time and slightly higher FID-digits) and 0 on the others (on the DiT they did not help; "
        "SDXL, SD3 and Flux are not measured with them; BENCHMARKS.md).",
    )
    adversarial_step_size: float = option(
        0.05, "Size of each signed-gradient step of --adversarial_steps, per embedding coordinate."
    )

    def __post_init__(self):
        super().__post_init__()
        if self.forget_loss is not None and self.forget_loss not in FORGET_LOSSES:
            raise ValueError(f"forget_loss must be one of {FORGET_LOSSES}, got {self.forget_loss!r}.")
        if self.remain_target not in REMAIN_TARGETS:
            raise ValueError(f"remain_target must be one of {REMAIN_TARGETS}, got {self.remain_target!r}.")
        for name in ("alpha", "temperature", "remain_weight", "gamma"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.mask_batches < 1:
            raise ValueError(f"mask_batches must be >= 1, got {self.mask_batches}.")
        if self.mask_groups is not None and self.mask_groups < 1:
            raise ValueError(f"mask_groups must be >= 1 or None, got {self.mask_groups}.")
        if (self.adversarial_steps is not None and self.adversarial_steps < 0) or self.adversarial_step_size <= 0:
            raise ValueError("adversarial_steps must be >= 0 and adversarial_step_size > 0.")
        self.check_grad_norms("forget_max_grad_norm", "remain_max_grad_norm")
        self.check_label_dropout()


class SFROn(UnlearningMethod):
    name = "sfr_on"
    paper = (
        "Huang et al., Unified Gradient-Based Machine Unlearning with Remain Geometry Enhancement, NeurIPS 2024 "
        "(arXiv:2409.19732)"
    )
    config_class = SFROnConfig

    def __init__(self, config: SFROnConfig, family, *, anchor: str | None = None, original: str = "copy"):
        super().__init__(config, family, anchor=anchor, original=original)
        self.remap_condition = None
        if self.forget_loss == "remap":
            target = config.remap_target if config.remap_target is not None else anchor
            self.remap_condition = family.null_class_id if target is None else family.resolve_class(target)

    @property
    def forget_loss(self) -> str:
        return self.config.forget_loss or self.family.default_forget_loss

    @property
    def adversarial_steps(self) -> int:
        steps = self.config.adversarial_steps
        return self.family.default_adversarial_steps if steps is None else steps

    @property
    def needs_original(self) -> bool:
        # θ₀ gives the remap target sg(ε_θ₀(x_t, c_target)) and the distilling remain step's target.
        return self.forget_loss != "ascent" or self.config.remain_target == "original"

    @classmethod
    def check_config(cls, config: SFROnConfig, family) -> None:
        forget_loss = config.forget_loss or family.default_forget_loss
        if config.unconditional_forget and forget_loss == "ascent":
            raise ValueError(
                "unconditional_forget pulls the unconditional branch onto a remap's targets; ascent has none (and "
                "ascent on that branch would break guidance for every class): use --forget_loss remap or remap_others."
            )
        if config.remap_target is None:
            return
        if forget_loss != "remap":
            raise ValueError(
                f"remap_target {config.remap_target!r} is the target of forget_loss remap, but this run uses "
                f"forget_loss {forget_loss} (remap_others takes its targets from the remain set): add --forget_loss "
                "remap, or drop the target."
            )
        family.resolve_class(config.remap_target)  # an unknown class is an error now, not after the data

    @classmethod
    def picks_anchor(cls, config: SFROnConfig) -> bool:
        return config.forget_loss == "remap" and config.remap_target is None

    @property
    def phases(self) -> tuple[Phase, ...]:
        cfg = self.config
        if not cfg.online:
            return (
                Phase("joint", data=("forget", "remain"), masked=cfg.use_mask, max_grad_norm=cfg.forget_max_grad_norm),
            )
        # remap_others draws its targets from the remain batch of the same iteration (the one the remain step uses).
        forget_data = ("forget", "remain") if self.forget_loss == "remap_others" else "forget"
        return (
            Phase("forget", data=forget_data, masked=cfg.use_mask, max_grad_norm=cfg.forget_max_grad_norm),
            Phase("remain", data="remain", masked=False, max_grad_norm=cfg.remain_max_grad_norm),
        )

    def saliency_mask(self, fisher_forget, fisher_remain):
        """Forget-remain balanced saliency: ``(F_f + ε) / (F_r + ε) ≥ γ``, each weight on its own estimates."""
        return saliency_mask(fisher_forget, fisher_remain, self.config.gamma)

    def check_mask(self, mask) -> None:
        """A mask that selects no weight would make the forget step a no-op (an "erasure" that only fine-tunes on
        the remain set): an error. One that selects every weight is the ablation without S: a loud warning."""
        density = mask_density(mask)
        if density == 0:
            raise ValueError(
                f"The saliency mask selects no weight (density 0 at gamma={self.config.gamma:g}): the forget step "
                "could not change the model. Lower --gamma (default 1)."
            )
        if density == 1:
            logger.warning(
                "The saliency mask selects every weight (density 1 at gamma=%g): the forget step is unmasked, as "
                "with --no_mask. Raise --gamma for a selective mask.",
                self.config.gamma,
            )

    @property
    def mask_groups(self) -> int:
        if self.config.mask_groups is not None:
            return self.config.mask_groups
        return LORA_MASK_GROUPS if has_adapters(self.family.denoiser) else 1

    def original_targets(self, phase, batch) -> dict[str, torch.Tensor]:
        """θ₀'s predictions the phase fits: the remap target of the forget batch (``forget``), the unconditional
        branch's target on it (``forget_unconditional``) and the distilling remain step's target (``remain``), where
        the configuration uses them."""
        forget, remain = (batch["forget"], batch["remain"]) if isinstance(batch, dict) else (batch, None)
        targets = {}
        if phase.name in ("forget", "joint") and self.forget_loss != "ascent":
            family = self.family
            x0 = encoded(family, forget, family_device(family.denoiser))
            conditions = self.remap_conditions(forget, remain).to(x0.device)
            timesteps = forget.draw.timesteps.to(x0.device)
            noisy = family.noisy(x0, forget.draw)
            targets["forget"] = self.original.predict(noisy, timesteps, conditions)
            if self.config.unconditional_forget:
                labels = forget.labels.to(x0.device)
                unconditional = self.original.predict(noisy, timesteps, torch.full_like(labels, family.null_class_id))
                concept = self.original.predict(noisy, timesteps, labels)
                targets["forget_unconditional"] = unconditional - (concept - unconditional)
        if phase.name in ("remain", "joint") and self.config.remain_target == "original":
            remain = batch if phase.name == "remain" else remain
            targets["remain"] = original_remain_target(self.family, self.original, remain, self.config.label_dropout)
        return targets

    def loss(self, phase, model, batch: Batch, *, step, total_steps, reduce_sum, num_processes):
        if phase.name not in ("forget", "remain", "joint"):
            raise ValueError(f"SFR-on has no phase {phase.name!r}.")
        targets = self.original_targets(phase, batch)
        if phase.name == "remain":
            return self._remain_terms(model, batch, targets.get("remain"))
        forget = batch["forget"] if isinstance(batch, dict) else batch
        terms = self._forget_terms(model, forget, targets, step, total_steps, reduce_sum, num_processes)
        if phase.name == "forget":
            return terms
        remain = self._remain_terms(model, batch["remain"], targets.get("remain"))
        return {**terms, **remain, "loss": terms["loss"] + remain["loss"]}

    def remap_conditions(self, forget: Batch, remain: Batch | None) -> torch.Tensor:
        """Each forget sample's target condition: the fixed remap target, or one of the remain batch's conditions
        picked by the sample's own uniform draw (remap_others: never a forgotten condition). The fixed target is never
        an erased concept either (:func:`sfr_diffusion.erase` refuses one)."""
        if self.forget_loss == "remap_others":
            return random_remain_conditions(forget, remain)
        return torch.full_like(forget.labels, self.remap_condition)

    def _forget_terms(self, model, batch, targets, step, total_steps, reduce_sum, num_processes):
        family, cfg = self.family, self.config
        x0 = encoded(family, batch, family_device(model))
        labels = batch.labels.to(x0.device)  # the real label, never dropped (unconditional_forget: its own term)
        alpha = forget_weight(step, total_steps, cfg.alpha, cfg.cosine_decay)
        loss, per_sample = self._forget_loss(model, x0, labels, batch, targets, alpha, reduce_sum, num_processes)
        prefix = "forget_mse" if self.forget_loss == "ascent" else "forget_remap"
        terms = {prefix: per_sample.detach().mean()}
        if self.adversarial_steps:
            embedding = self.adversarial_embedding(x0, labels, batch, reduce_sum)
            with family.condition_embedding_override(labels.unique().tolist(), embedding):
                adversarial, adversarial_per_sample = self._forget_loss(
                    model, x0, labels, batch, targets, alpha, reduce_sum, num_processes
                )
            loss = (loss + adversarial) / 2
            terms[f"{prefix}_adversarial"] = adversarial_per_sample.detach().mean()
        terms |= {"loss": loss, "alpha": torch.tensor(alpha, device=x0.device)}
        terms.update(timestep_quartile_terms(prefix, per_sample, batch.draw.timesteps, family.num_timesteps))
        return terms

    def _forget_loss(self, model, x0, labels, batch, targets, alpha, reduce_sum, num_processes):
        """The forget loss of the batch and its per-sample terms: the remap onto ``targets["forget"]`` (plus the
        unconditional branch's onto ``targets["forget_unconditional"]`` where given), or weighted ascent."""
        family = self.family
        if "forget" in targets:
            timesteps = batch.draw.timesteps.to(x0.device)
            noisy = family.noisy(x0, batch.draw)
            per_sample = per_sample_mse(family.predict(model, noisy, timesteps, labels), targets["forget"])
            total = per_sample.sum()
            if "forget_unconditional" in targets:
                null = torch.full_like(labels, family.null_class_id)
                prediction = family.predict(model, noisy, timesteps, null)
                total = total + per_sample_mse(prediction, targets["forget_unconditional"]).sum()
            # Mean over the global batch; DDP averages gradients over processes, hence the division by global size.
            return alpha * total * num_processes / batch.global_size, per_sample
        per_sample = family.diffusion_loss(model, x0, labels, batch.draw)
        weights = adaptive_weights(per_sample, self.config.temperature, reduce_sum)
        # Σ_i w_i ℓ_i over the global batch; DDP averages gradients over processes, so scale the local share up.
        return weighted_ascent_loss(per_sample, weights, alpha) * num_processes, per_sample

    def adversarial_embedding(self, x0, labels, batch, reduce_sum=None) -> torch.Tensor:
        """The embedding that draws the forget batch best after ``adversarial_steps`` signed-gradient steps from the
        model's own embedding of the global batch's first condition, the weights frozen (one embedding stands in for
        every forget condition of the batch, as the inversion attack's does for a concept's prompts). Only the
        embedding gets gradients (``torch.autograd.grad``) and the unwrapped denoiser runs, so neither the weights'
        ``.grad`` nor DDP's gradient reduction sees these steps; every process starts from the same condition
        (``batch.lead_label``) and `reduce_sum` (the sum over processes) makes each step's gradient the whole global
        batch's, so that every process takes the same steps."""
        family, cfg = self.family, self.config
        model = family.denoiser
        embedding = family.condition_embedding(batch.lead_label).to(x0.device).requires_grad_(True)
        with family.condition_embedding_override(labels.unique().tolist(), embedding):
            for _ in range(self.adversarial_steps):
                loss = family.diffusion_loss(model, x0, labels, batch.draw).mean()
                (gradient,) = torch.autograd.grad(loss, [embedding])
                if reduce_sum is not None:  # the processes' local batches are of one size: the sum has the mean's sign
                    gradient = reduce_sum(gradient)
                with torch.no_grad():
                    embedding -= cfg.adversarial_step_size * gradient.sign()
        return embedding.detach()

    def _remain_terms(self, model, batch, target):
        cfg = self.config
        return remain_terms(self.family, model, batch, cfg.label_dropout, cfg.remain_weight, target)
