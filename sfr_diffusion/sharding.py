"""Fully sharded data parallelism (FSDP2, ``accelerate launch --config_file configs/accelerate_fsdp.yaml``): what an
erasure does differently when the denoiser's parameters are DTensors sharded over the processes.

FSDP2 shards every parameter on its own (dim 0) and keeps its name, so the saliency mask, keyed by parameter names,
needs no translation: the diagonal Fisher is elementwise, so each process squares its shard of the reduced gradient
(:func:`sfr_diffusion.saliency.diagonal_fisher` works on DTensors as they are), and the forget step masks and puts
back each process's shard with the matching slice of the mask (:func:`local_masks`). What leaves the run whole is
gathered: the mask written to checkpoints and exports (:func:`gathered_mask`), the denoiser written to checkpoints
and exports (:func:`unsharded_copy`). FSDP1 flattens the parameters of a wrapped block into one, so a per-parameter
mask cannot apply to it: it is refused (:func:`check_sharding`).
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from .saliency import Mask

try:
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # a torch built without torch.distributed: nothing is ever sharded
    DTensor, distribute_tensor = (), None


def is_sharded(accelerator: Accelerator) -> bool:
    """Whether `accelerator` shards the models it prepares (FSDP)."""
    return accelerator.distributed_type == DistributedType.FSDP


def check_sharding(accelerator: Accelerator, *, lora: bool, tracked: bool, mask_groups: int = 1) -> None:
    """Refuse, before any work, what does not run sharded: FSDP1, LoRA adapters, evaluations during training, a
    Fisher measured group by group."""
    if not is_sharded(accelerator):
        return
    if not accelerator.is_fsdp2:
        raise ValueError(
            "FSDP1 flattens each wrapped block's parameters into one, so the per-parameter saliency mask cannot "
            "apply: set fsdp_version: 2 in the accelerate config (configs/accelerate_fsdp.yaml does)."
        )
    if lora:
        raise ValueError(
            "LoRA adapters train a few million weights and fit one card: erase with --lora_rank under data "
            "parallelism (accelerate launch --multi_gpu), not FSDP."
        )
    if mask_groups > 1:
        raise ValueError(
            "--mask_groups measures the Fisher group by group as backward makes each gradient, which FSDP's "
            "sharded gradients (written after backward) do not allow; under FSDP each process measures its shard "
            "alone, a small share already: drop --mask_groups."
        )
    if tracked:
        raise ValueError(
            "--eval_every evaluates on the main process alone, which cannot run a sharded denoiser: under FSDP the "
            "erased model is evaluated once, after training (drop --eval_every and --stop_when_forgotten)."
        )


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a DTensor (a sharded parameter or its gradient), any other tensor itself; the shard
    is the DTensor's own storage, so writing into it writes into the DTensor."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def local_masks(mask: Mask, model: torch.nn.Module) -> Mask:
    """Each mask entry as the forget step applies it to `model`'s parameter of that name: on its device and, for a
    sharded parameter, the slice its shard holds (a mask computed on the sharded weights is a DTensor already; a
    whole one, reloaded to resume, is cut locally: every process holds all of it)."""
    params = dict(model.named_parameters())
    result = {}
    for name, keep in mask.items():
        param = params[name]
        if isinstance(keep, DTensor):
            keep = keep.to_local()
        elif isinstance(param, DTensor):
            keep = distribute_tensor(keep.to(param.device), param.device_mesh, param.placements, src_data_rank=None)
            keep = keep.to_local()
        result[name] = keep.to(param.device)
    return result


def gathered_mask(mask: Mask, *, keep: bool) -> Mask | None:
    """The whole mask on the CPU, gathered one tensor at a time (every process must call this when it is sharded);
    None where `keep` is false and the mask was sharded, so that only the process that writes it holds it whole."""
    if not any(isinstance(m, DTensor) for m in mask.values()):
        return {name: m.cpu() for name, m in mask.items()}
    whole = {}
    for name, m in mask.items():
        full = m.full_tensor() if isinstance(m, DTensor) else m
        if keep:
            whole[name] = full.cpu()
    return whole if keep else None


def unsharded_copy(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module | None:
    """On the main process, `model` (a prepared, sharded diffusers model) as a plain model of its own class with the
    whole weights on the CPU, for ``save_pretrained``; None on the others. Every process must call this (the
    weights are gathered). The sharded model cannot be saved itself: FSDP2 changes its class, which
    ``save_pretrained`` would record as the one to load."""
    state = accelerator.get_state_dict(model)  # whole, on the CPU, on the main process (empty on the others)
    if not accelerator.is_main_process:
        return None
    from accelerate import init_empty_weights
    from torch.distributed.fsdp import FSDPModule

    model_class = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))
    with init_empty_weights(include_buffers=False):  # parameters on the meta device until the gathered ones replace
        copy = model_class.from_config(model.config)
    copy.load_state_dict({name: tensor.cpu() for name, tensor in state.items()}, strict=True, assign=True)
    return copy.eval()
