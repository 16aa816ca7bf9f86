"""Pure loss functions. Each returns per-sample values (shape ``(B,)``) or a dict of named terms.

Notation follows the paper (arXiv 2409.19732, §4): ℓ_i the per-sample diffusion loss, λ the temperature of the
adaptive forget weights, α_t the forget-loss weight.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every dimension but the batch one, computed in fp32."""
    return (prediction.float() - target.float()).pow(2).flatten(1).mean(1)


def adaptive_weights(
    per_sample_losses: torch.Tensor,
    temperature: float,
    reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``w_i = ℓ_i^(-λ) / Σ_j ℓ_j^(-λ)`` with no gradient through ``w``.

    Samples the model still fits well (small ℓ_i) get more of the ascent push. When the batch is sharded across
    processes, `reduce_sum` sums a tensor over them, so that the normaliser is the *global* batch's.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}.")
    unnormalised = per_sample_losses.detach().float().clamp_min(1e-12).pow(-temperature)
    total = unnormalised.sum()
    return unnormalised / (total if reduce_sum is None else reduce_sum(total))


def forget_weight(step: int, total_steps: int, alpha: float, cosine_decay: bool = True) -> float:
    """``α_t = α_0 · (1 + cos(π t / T)) / 2`` with cosine decay, else the constant ``α_0``."""
    if not cosine_decay:
        return alpha
    return alpha * (1.0 + math.cos(math.pi * step / total_steps)) / 2.0


def weighted_ascent_loss(per_sample_losses: torch.Tensor, weights: torch.Tensor, alpha: float) -> torch.Tensor:
    """The loss to *minimise* for weighted gradient ascent: ``-α Σ_i w_i ℓ_i``."""
    return -alpha * (weights * per_sample_losses).sum()
