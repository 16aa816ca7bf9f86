"""LoRA erasure: low-rank adapters on the denoiser's projections train instead of its weights (through peft).

The adapters start as the identity (peft's default: B = 0), so the model before the first step is the original, and
θ₀, the target of remap and ESD and the teacher of the remain step, is the same denoiser with its adapters switched
off (:class:`WithoutAdapters`): no frozen copy of the denoiser exists.

SFR-on's saliency mask is a mask on weights; adapters have none of their own worth measuring (at B = 0 the
gradient of A is zero). The Fisher ratio is therefore computed on the *base* weights of the adapted modules, as
without LoRA, and each module's adapter moves in the forget step iff the module is salient: its share of salient
base weights is at least the share over all adapted modules (:func:`adapter_mask`). The remain step moves every
adapter, as it moves every weight without LoRA.

An erased pipeline with adapters exports either as ``pytorch_lora_weights.safetensors`` (:func:`save_lora_export`,
loadable with ``pipe.load_lora_weights(folder)`` on the base pipeline) or, fused (:func:`fuse_adapters`), as a full
standard pipeline.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from .saliency import Mask

# The attention projections every diffusers denoiser has (UNets, DiT, SD3's and Flux's transformers), which the
# diffusers LoRA training examples adapt.
DEFAULT_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
ADAPTER_NAME = "default"
LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"  # what ``save_lora_weights`` writes


def target_module_names(
    model: torch.nn.Module, targets: tuple[str, ...], trains: Callable[[str], bool] = lambda name: True
) -> list[str]:
    """The linear (or convolution) modules of `model` whose name ends in one of `targets` and whose weight the
    weight selection `trains` (e.g. ``--trainable cross_attention``) lets train; none is an error."""
    chosen = [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear | torch.nn.Conv2d)
        and any(name == t or name.endswith(f".{t}") for t in targets)
        and trains(f"{name}.weight")
    ]
    if not chosen:
        raise ValueError(
            f"No module of {type(model).__name__} matches --lora_target_modules {','.join(targets)} within the "
            "selected weights; name linear layers such as to_q,to_k,to_v,to_out.0."
        )
    return chosen


def add_adapters(model: torch.nn.Module, modules: list[str], rank: int, alpha: float, seed: int):
    """Inject LoRA adapters of `rank` into `modules` of `model` in place (A drawn from `seed`, B = 0); returns the
    peft ``LoraConfig``."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=modules, init_lora_weights=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    return config


def adapter_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The peft LoRA layers of `model`, by module name (empty without adapters)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {name: module for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)}


def has_adapters(model: torch.nn.Module) -> bool:
    return bool(adapter_layers(model))


def is_adapter_weight(name: str) -> bool:
    return ".lora_" in name


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """`model` as it was before its adapters (each layer's base alone), restored on exit."""
    layers = adapter_layers(model).values()
    enabled = [not layer.disable_adapters for layer in layers]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer, flag in zip(layers, enabled, strict=True):
            layer.enable_adapters(flag)


class WithoutAdapters(torch.nn.Module):
    """θ₀ of a denoiser that trains adapters: calling it runs the denoiser with its adapters off.

    The denoiser is held, not registered as a submodule, so that this view owns no parameters (``.to()``,
    ``.parameters()`` and optimizers never see the denoiser's weights through it).
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self._held = (model,)

    def forward(self, *args, **kwargs):
        (model,) = self._held
        training = model.training
        model.eval()  # as a frozen copy would run: no dropout
        try:
            with adapters_disabled(model):
                return model(*args, **kwargs)
        finally:
            model.train(training)


@contextlib.contextmanager
def base_weights_trainable(model: torch.nn.Module) -> Iterator[list[str]]:
    """Only the adapted modules' base weights take gradients (the adapters off and frozen), so that the Fisher of
    the original model is measured where the adapters act; yields those weights' names. Restored on exit."""
    params = dict(model.named_parameters())
    flags = {name: p.requires_grad for name, p in params.items()}
    names = [f"{name}.base_layer.weight" for name in adapter_layers(model)]
    for name, param in params.items():
        param.requires_grad_(name in names)
    try:
        with adapters_disabled(model):
            yield names
    finally:
        for name, param in params.items():
            param.requires_grad_(flags[name])


def adapter_mask(model: torch.nn.Module, base_mask: Mask) -> Mask:
    """The forget step's mask on adapters from the saliency mask of the adapted modules' base weights: a module's
    adapter (its A and B) is salient iff the module's share of salient weights is at least the share over all of
    them. Keyed by the adapter weights' names, as ``model.named_parameters()`` gives them."""
    kept = sum(int(m.sum()) for m in base_mask.values())
    overall = kept / max(sum(m.numel() for m in base_mask.values()), 1)
    params = dict(model.named_parameters())
    mask = {}
    for name in adapter_layers(model):
        share = float(base_mask[f"{name}.base_layer.weight"].float().mean())
        salient = kept > 0 and share >= overall
        for param_name in params:
            if param_name.startswith(f"{name}.") and is_adapter_weight(param_name):
                mask[param_name] = torch.full_like(params[param_name], salient, dtype=torch.bool)
    return mask


def adapter_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' weights under the names ``save_lora_weights`` expects (peft's, without the adapter name)."""
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME)


@torch.no_grad()
def fuse_adapters(model: torch.nn.Module) -> None:
    """Merge every adapter into its base weight and put the base layer back in its place: `model` becomes a plain
    denoiser of the original class, with the erased weights."""
    for name, layer in adapter_layers(model).items():
        layer.merge(adapter_names=[ADAPTER_NAME])
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer.get_base_layer())


def component_name(pipeline, module: torch.nn.Module) -> str:
    """The pipeline component that `module` is ("unet", "transformer")."""
    for name, component in pipeline.components.items():
        if component is module:
            return name
    raise ValueError(f"{type(module).__name__} is not a component of {type(pipeline).__name__}.")


def loads_lora(pipeline) -> bool:
    """Whether the pipeline's class can load LoRA weights with ``load_lora_weights`` (SD, SDXL, SD3, Flux; not
    DiTPipeline nor the class-conditional DDPM pipeline)."""
    return callable(getattr(pipeline, "load_lora_weights", None))


def check_lora_loadable(pipeline) -> None:
    """A LoRA export is refused for a pipeline class that cannot load one."""
    if not loads_lora(pipeline):
        raise ValueError(
            f"{type(pipeline).__name__} cannot load LoRA weights (it has no load_lora_weights): export the erased "
            "model fused into a full pipeline (--fuse_lora, or save_pretrained(..., fuse_lora=True))."
        )


def save_lora_export(pipeline, denoiser: torch.nn.Module, lora_config, folder: Path) -> None:
    """Write the denoiser's adapters as ``pytorch_lora_weights.safetensors`` with the pipeline class's own
    ``save_lora_weights`` (its rank and α in the file's metadata, so ``load_lora_weights`` scales them as trained)."""
    check_lora_loadable(pipeline)
    component = component_name(pipeline, denoiser)
    metadata = lora_config.to_dict()
    metadata["target_modules"] = sorted(metadata["target_modules"])
    type(pipeline).save_lora_weights(
        str(folder),
        **{f"{component}_lora_layers": adapter_state_dict(denoiser), f"{component}_lora_adapter_metadata": metadata},
        safe_serialization=True,
    )
