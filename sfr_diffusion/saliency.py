"""Forget-remain balanced weight saliency (paper §4.3): a boolean mask per parameter, computed once.

``F_f[k]`` and ``F_r[k]`` are diagonal empirical Fisher estimates, the mean over batches of the squared batch
gradient of the forget and remain losses at the *original* weights. A weight is salient, and may move during the
forget phase, iff ``(F_f[k] + ε) / (F_r[k] + ε) ≥ γ`` — a threshold on the ratio, not a top-k.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

Mask = dict[str, torch.Tensor]


MASK_FILE = "saliency_mask.safetensors"  # the mask as exports and checkpoints store it


def diagonal_fisher(
    model: torch.nn.Module,
    batch_losses: Iterable[Callable[[], torch.Tensor]],
    backward: Callable[[torch.Tensor], None] | None = None,
    grad_scale: Callable[[], float] = lambda: 1.0,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    streamed: bool = True,
    measure: Iterable[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Mean over batches of the squared gradient of each batch's scalar loss, one batch at a time.

    ``batch_losses`` yields closures computing one batch's loss; ``backward`` defaults to ``loss.backward()``
    (pass ``accelerator.backward`` under accelerate). ``grad_scale`` gives the loss scale that backward applies
    (fp16's GradScaler), divided out before squaring; ``reduce`` averages a gradient over processes before it is
    squared (for a model that DDP does not reduce).

    ``streamed``: each gradient is squared into the estimate as soon as backward has accumulated it, and freed at
    once (``register_post_accumulate_grad_hook``), so the pass holds the estimates and no stored gradients. Otherwise
    (parameters whose gradients a wrapper writes after backward, as FSDP's sharded ones) the gradients are squared
    after each backward.

    ``measure``: the names of the parameters to estimate (default: all that take gradients). The others still take
    gradients, which are dropped unsquared (a parameter's ``requires_grad`` is never switched here).
    """
    backward = backward or (lambda loss: loss.backward())
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    measured = set(params) if measure is None else set(measure)
    if not measured <= params.keys():
        raise ValueError(f"Cannot measure parameters that take no gradient: {sorted(measured - params.keys())[:3]}.")
    fisher = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items() if name in measured}
    scale = 1.0

    def square_into(name: str, grad: torch.Tensor) -> None:
        if reduce is not None:
            grad = reduce(grad)
        squared = (grad.detach().float() / scale).pow(2)
        if not torch.isfinite(squared).all():
            raise FloatingPointError(
                f"Non-finite gradient for {name} while estimating the Fisher; use bf16 or fp32 precision."
            )
        fisher[name].add_(squared)

    def squared_and_freed(name: str):
        def hook(param: torch.Tensor) -> None:
            if name in fisher:
                square_into(name, param.grad)
            param.grad = None

        return hook

    handles = (
        [p.register_post_accumulate_grad_hook(squared_and_freed(n)) for n, p in params.items()] if streamed else []
    )
    num_batches = 0
    try:
        for compute_loss in batch_losses:
            model.zero_grad(set_to_none=True)
            scale = grad_scale()  # the scale this batch's backward applies (fp16 changes it only at an update)
            backward(compute_loss())
            for name, p in params.items():
                if p.grad is not None and name in fisher:  # streamed: none is left
                    square_into(name, p.grad)
            num_batches += 1
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
    if num_batches == 0:
        raise ValueError("diagonal_fisher needs at least one batch.")
    return {name: f.div_(num_batches) for name, f in fisher.items()}


def weight_groups(params: Mapping[str, torch.Tensor], groups: int) -> list[list[str]]:
    """The names of `params` in at most `groups` runs of consecutive parameters holding about equally many weights
    (none empty; a tensor is never split)."""
    total = max(sum(p.numel() for p in params.values()), 1)
    runs: list[list[str]] = [[] for _ in range(groups)]
    before = 0
    for name, param in params.items():
        runs[min(groups - 1, before * groups // total)].append(name)
        before += param.numel()
    return [run for run in runs if run]


def saliency_mask(
    fisher_forget: Mapping[str, torch.Tensor],
    fisher_remain: Mapping[str, torch.Tensor],
    gamma: float = 1.0,
    eps: float = 1e-15,
) -> Mask:
    """``S[k] = (F_f[k] + ε) / (F_r[k] + ε) ≥ γ`` as a bool tensor per parameter."""
    if fisher_forget.keys() != fisher_remain.keys():
        raise ValueError("Forget and remain Fisher estimates cover different parameters.")
    return {
        name: (fisher_forget[name].double() + eps) / (fisher_remain[name].double() + eps) >= gamma
        for name in fisher_forget
    }


def top_fraction_mask(scores: Mapping[str, torch.Tensor], fraction: float) -> Mask:
    """The `fraction` of weights with the largest scores over the whole model (one global threshold; ties kept)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
    flat = torch.cat([score.detach().double().flatten() for score in scores.values()])
    keep = max(1, round(fraction * flat.numel()))
    threshold = torch.topk(flat, keep).values.min()
    return {name: score.double() >= threshold for name, score in scores.items()}


def mask_density(mask: Mapping[str, torch.Tensor]) -> float:
    """Share of weights that the mask lets the forget phase move."""
    total = sum(m.numel() for m in mask.values())
    return sum(int(m.sum()) for m in mask.values()) / max(total, 1)


def mask_statistics(mask: Mapping[str, torch.Tensor]) -> dict:
    kept, total = sum(int(m.sum()) for m in mask.values()), sum(m.numel() for m in mask.values())
    return {
        "density": kept / max(total, 1),
        "salient_weights": kept,
        "total_weights": total,
    }


def save_mask(mask: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Store as bool safetensors (one byte a weight; never int64, never a pickle)."""
    save_file({name: m.to(torch.bool).contiguous().cpu() for name, m in mask.items()}, str(path))


def load_mask(path: str | Path) -> Mask:
    mask = load_file(str(path))
    wrong = [name for name, m in mask.items() if m.dtype != torch.bool]
    if wrong:
        raise ValueError(f"{path} is not a boolean saliency mask (non-bool tensors: {wrong[:3]}).")
    return mask


def check_mask_matches(mask: Mapping[str, torch.Tensor], model: torch.nn.Module) -> None:
    """A mask must name exactly the trainable parameters, with the same shapes; anything else is an error."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if mask.keys() != params.keys():
        missing, extra = sorted(params.keys() - mask.keys()), sorted(mask.keys() - params.keys())
        raise ValueError(f"Saliency mask does not match the model: missing {missing[:3]}, unexpected {extra[:3]}.")
    for name, p in params.items():
        if mask[name].shape != p.shape:
            raise ValueError(
                f"Saliency mask for {name} has shape {tuple(mask[name].shape)}, expected {tuple(p.shape)}."
            )
