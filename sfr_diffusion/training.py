"""The erasure loop on accelerate: run a method's phases in order, one optimizer, checkpoints, resume, logging."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .adapters import (
    ADAPTER_NAME,
    DEFAULT_TARGET_MODULES,
    adapter_layers,
    adapter_mask,
    adapter_state_dict,
    base_weights_trainable,
    is_adapter_weight,
)
from .arguments import option
from .data import (
    FISHER_FORGET_STREAM,
    FISHER_REMAIN_STREAM,
    FORGET_STREAM,
    REMAIN_STREAM,
    BatchSampler,
    LabelledImages,
)
from .forgetting import held_for
from .methods import Phase, UnlearningMethod
from .original import ORIGINALS, PrecomputedOriginal
from .saliency import (
    MASK_FILE,
    Mask,
    check_mask_matches,
    diagonal_fisher,
    load_mask,
    mask_statistics,
    save_mask,
    weight_groups,
)
from .sharding import check_sharding, gathered_mask, is_sharded, local, local_masks, unsharded_copy
from .validation import check_field_values

logger = logging.getLogger(__name__)

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
# Which denoiser weights train. diffusers names cross-attention layers ``attn2`` (text conditioning in SD's UNet).
TRAINABLE = {
    "all": lambda name: True,
    "cross_attention": lambda name: ".attn2." in name,
    "no_cross_attention": lambda name: ".attn2." not in name,
    # The class-embedding tables (the DDPM's class_embedding, every DiT block's class_embedder) stay as they were, so
    # an erasure cannot live in the forgotten class's row alone (resetting that row would undo it).
    "no_class_embedding": lambda name: "class_embed" not in name,
}
PROGRESS_FILE = "progress.json"  # in each checkpoint: the evaluations so far and the seconds spent
# Written first into a checkpoints folder this package creates: what tells our folders from a user's.
CHECKPOINTS_MARKER = "sfr_diffusion_checkpoints.json"
# What a checkpoint folder must hold to be resumed from, each under one of its names: accelerate's optimizer state (a
# file, or under FSDP's SHARDED_STATE_DICT a folder of shards), our denoiser hook's output.
CHECKPOINT_CONTENTS = (("optimizer.bin", "optimizer_0"), ("denoiser/config.json",))
CHECKPOINT_ADAPTERS_FILE = "lora_weights.safetensors"  # in denoiser/ when the run trains LoRA adapters


MIXED_PRECISION = ("no", "fp16", "bf16")


@contextlib.contextmanager
def attention_backends(cudnn: bool):
    """Inside: scaled_dot_product_attention with cuDNN's backend allowed as torch has it (`cudnn` True), or turned
    off; torch's setting is put back on leaving."""
    previous = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(previous and cudnn)
    try:
        yield
    finally:
        torch.backends.cuda.enable_cudnn_sdp(previous)


@dataclass
class TrainingArguments:
    """Optimisation settings shared by every method.

    Defaults: the official DDPM CIFAR-10 SFR-on recipe (Adam, clipping in the method config) with the paper's
    headline budget of 50 iterations, at batch 64 + 64 (official: 128 + 128); the learning rate, unless given, is
    the one :func:`sfr_diffusion.presets.learning_rate_for` picks for the model.

    ``checkpoints_dir`` holds this run's training state (``checkpoint-N/`` folders and the original model's saliency
    mask, needed to resume); it is never the export folder, and None means no checkpoints. A folder that holds
    anything sfr-diffusion did not write is refused, so a run never mixes its state with a user's files.
    """

    checkpoints_dir: str | None = option(
        None,
        "Training checkpoints (with --checkpointing_steps, --resume_from_checkpoint or --report_to); the command "
        "line's default is <output_dir>-checkpoints.",
    )
    max_train_steps: int = option(50, "Iterations (an SFR-on iteration is a forget step and a remain step).")
    learning_rate: float | None = option(
        None,
        "Default: on the bundled digits world the rate measured for the family (DDPM 1e-3, DiT 5e-4, SD and SD3 "
        "3e-4), on other checkpoints the official code's (DDPM and DiT 1e-4, text-to-image 1e-5); ten times it with "
        "--lora_rank.",
    )
    optimizer: str = option("adam", "The one optimizer every phase steps.", choices=tuple(OPTIMIZERS))
    adam_beta1: float = option(0.9, "Adam's β1.")
    adam_beta2: float = option(0.999, "Adam's β2.")
    adam_weight_decay: float = option(0.0, "Weight decay (decoupled with adamw).")
    adam_epsilon: float = option(1e-8, "Adam's ε.")
    forget_batch_size: int = option(64, "Global forget batch (split over processes).")
    remain_batch_size: int = option(64, "Global remain batch (split over processes).")
    seed: int = option(0, "Seeds the batches, noise and timesteps: same seed, same result.")
    mixed_precision: str | None = option(
        None,
        "no, fp16 or bf16 (default: accelerate's configuration). Frozen parts (and with --original copy the "
        "frozen copy of the denoiser) are kept in this dtype; trained weights stay fp32. fp16 needs a CUDA GPU "
        "(without one: fp32).",
        choices=MIXED_PRECISION,
    )
    checkpointing_steps: int | None = option(None, "Save a resumable checkpoint every N iterations.")
    checkpoints_total_limit: int | None = option(None, "Keep at most this many checkpoints.")
    resume_from_checkpoint: str | None = option(None, 'A checkpoint folder or "latest".')
    report_to: str | None = option(None, '"tensorboard", "wandb", "all"... (default: none).')
    gradient_checkpointing: bool = option(False, "Trade compute for memory in the denoiser.")
    cudnn_attention: bool = option(
        True,
        "Let scaled_dot_product_attention use cuDNN (torch's choice); --no_cudnn_attention leaves it to flash, "
        "memory-efficient or math attention while erasing. With torch 2.11 on an H200, cuDNN's attention backward "
        "failed on the FLUX.1-dev layout ('mha_graph.execute(...).is_good()', then an illegal memory access).",
        negative="--no_cudnn_attention",
    )
    eval_every: int | None = option(None, "Also measure FA/RA every N iterations (where an evaluator exists).")
    stop_when_forgotten: int | None = option(
        None,
        "With an evaluator and --eval_every: stop once FA ≤ 0.01 with RA ≥ base − 0.01 has held for this many "
        "consecutive evaluations (see sfr_diffusion.forgetting).",  # no percent sign: argparse formats help with %
    )
    trainable: str = option(
        "all",
        "Which denoiser weights train (cross-attention exists in text-conditioned UNets only, not in SD3's and "
        "Flux's joint-attention transformers; no_class_embedding keeps class-conditional models' class-embedding "
        "tables as they were).",
        choices=tuple(TRAINABLE),
    )
    original: str = option(
        "precomputed",
        "How remap, ESD and the distilling remain step have θ₀, the original denoiser, when full weights train: "
        "precomputed, its predictions for every iteration's batches made by the denoiser before the first step and "
        "kept on the CPU (no copy of the weights); copy, a frozen copy in the weight dtype predicting as training "
        "goes (one more denoiser in the accelerator's memory; nothing precomputed in vain when "
        "--stop_when_forgotten stops early). LoRA runs use the denoiser with its adapters off either way.",
        choices=ORIGINALS,
    )
    lora_rank: int | None = option(
        None,
        "Train LoRA adapters of this rank (peft) on --lora_target_modules instead of the weights themselves; the "
        "export is then a LoRA file for load_lora_weights (or, with --fuse_lora, a full pipeline).",
    )
    lora_alpha: float | None = option(None, "LoRA's α (adapters' output scaled by α / rank); default: the rank.")
    lora_target_modules: str = option(
        ",".join(DEFAULT_TARGET_MODULES),
        "Comma-separated names of the linear layers that get adapters (a name matches every module ending in it), "
        "within the weights --trainable selects.",
    )

    def __post_init__(self):
        check_field_values(self)
        if self.trainable not in TRAINABLE:
            raise ValueError(f"trainable must be one of {sorted(TRAINABLE)}, got {self.trainable!r}.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {self.optimizer!r}.")
        for name in ("max_train_steps", "forget_batch_size", "remain_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}.")
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}.")
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1):
            raise ValueError(f"adam_beta1 and adam_beta2 must be in [0, 1), got {self.adam_beta1}, {self.adam_beta2}.")
        if self.adam_weight_decay < 0 or self.adam_epsilon <= 0:
            raise ValueError(
                f"adam_weight_decay must be >= 0 and adam_epsilon > 0, got {self.adam_weight_decay}, "
                f"{self.adam_epsilon}."
            )
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}.")
        for name in ("checkpointing_steps", "checkpoints_total_limit", "eval_every", "stop_when_forgotten"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}.")
        if self.stop_when_forgotten is not None and self.eval_every is None:
            raise ValueError("stop_when_forgotten needs eval_every: forgetting is judged at the tracked evaluations.")
        if self.original not in ORIGINALS:
            raise ValueError(f"original must be one of {ORIGINALS}, got {self.original!r}.")
        if self.lora_rank is not None and self.lora_rank < 1:
            raise ValueError(f"lora_rank must be >= 1 or None, got {self.lora_rank}.")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be > 0, got {self.lora_alpha}.")
        if self.lora_alpha is not None and self.lora_rank is None:
            raise ValueError("lora_alpha scales LoRA adapters: give --lora_rank as well.")
        if not self.lora_targets:
            raise ValueError("lora_target_modules is empty: name linear layers such as to_q,to_k,to_v,to_out.0.")
        if self.checkpoints_dir is None:
            for name in ("checkpointing_steps", "resume_from_checkpoint"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} needs a checkpoints_dir to write to or read from.")

    @property
    def lora_targets(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.lora_target_modules.split(",") if name.strip())

    @property
    def trains(self) -> Callable[[str], bool]:
        """Which denoiser weights train, by name: the adapters under LoRA, else the --trainable selection."""
        return is_adapter_weight if self.lora_rank is not None else TRAINABLE[self.trainable]

    @property
    def checkpoints_path(self) -> Path | None:
        return None if self.checkpoints_dir is None else Path(self.checkpoints_dir)


@dataclass
class TrainingOutcome:
    """What the training loop did; after a resume, the seconds are the whole run's (the interrupted part included)."""

    steps: int
    mask_seconds: float
    train_seconds: float
    mask_statistics: dict | None
    history: list = field(default_factory=list)
    mask: Mask | None = None  # the original model's saliency mask (on the CPU), for the export
    # Trained sharded (FSDP): the erased denoiser whole, on the main process's CPU, for the export (None elsewhere).
    denoiser: torch.nn.Module | None = None


@dataclass
class PhaseEvent:
    """Passed to callbacks after each optimizer step, so tests and tools can see the schedule as it runs."""

    step: int
    phase: Phase
    terms: dict
    optimizer: torch.optim.Optimizer
    model: torch.nn.Module
    history: list  # the evaluations so far ({"step": ..., metrics...}), e.g. for a live FA/RA curve; do not modify


def select_trainable(model: torch.nn.Module, selection: str | Callable[[str], bool]) -> list[str]:
    """Freeze every weight outside `selection` (a ``TRAINABLE`` name, or a predicate on weight names such as
    ``TrainingArguments.trains``) and return the trainable names; an empty selection is an error."""
    if isinstance(selection, str) and selection not in TRAINABLE:
        raise ValueError(f"Unknown weight selection {selection!r}; valid: {sorted(TRAINABLE)}.")
    chosen_by = TRAINABLE[selection] if isinstance(selection, str) else selection
    chosen = [name for name, _ in model.named_parameters() if chosen_by(name)]
    if not chosen:
        raise ValueError(f"Weight selection {selection!r} matches no parameter of {type(model).__name__}.")
    chosen_set = set(chosen)
    for name, param in model.named_parameters():
        param.requires_grad_(name in chosen_set)
    return chosen


@dataclass
class ForgetMask:
    """The saliency mask as the forget step applies it: ``keep`` per trainable weight, and the names of the tensors
    that have non-salient entries (``partial``), computed once rather than on every forget step.

    Zeroing the gradient of non-salient weights is not enough with a shared Adam: moments accumulated in remain steps
    would still move them during the forget step. They are put back after the step, so the forget phase provably
    changes only salient weights (paper §4.3: S multiplies the forget update).

    The values put back are held for one chunk of tensors at a time (:meth:`step`): the optimizer steps each chunk
    on its own (tensors without a gradient are skipped by torch's optimizers, so each tensor is stepped once, as by
    one step), and no more than the largest tensor's non-salient entries are ever copied at once, instead of every
    non-salient weight of the model.

    Under FSDP each process holds a shard of every weight, and ``keep`` the matching slice of the mask
    (:func:`sfr_diffusion.sharding.local_masks`): masking and putting back are elementwise, so each process does
    them on its own shard.
    """

    keep: Mask
    partial: frozenset[str]

    @classmethod
    def from_mask(cls, mask: Mask) -> ForgetMask:
        return cls(keep=mask, partial=frozenset(name for name, m in mask.items() if not bool(m.all())))

    def mask_gradients(self, named_params) -> None:
        """Zero the gradients of non-salient weights."""
        for name, param in named_params:
            if name in self.keep and param.grad is not None:  # not in keep: frozen by the weight selection
                local(param.grad).mul_(self.keep[name])

    def chunks(self, params: list[tuple[str, torch.nn.Parameter]]) -> list[list[tuple[str, torch.nn.Parameter]]]:
        """`params` in order, grouped so that each group's non-salient entries are no more than the largest
        tensor's."""
        counts = [int((~self.keep[name]).sum()) if name in self.partial else 0 for name, _ in params]
        budget = max(counts, default=0)
        groups, current, held = [], [], 0
        for item, count in zip(params, counts, strict=True):
            if current and held + count > budget:
                groups.append(current)
                current, held = [], 0
            current.append(item)
            held += count
        return [*groups, current] if current else groups

    def step(self, optimizer, named_params) -> None:
        """``optimizer.step()`` on the masked gradients, chunk by chunk, each chunk's non-salient weights put back
        bit for bit after its step."""
        stepped = [(name, param) for name, param in named_params if param.grad is not None]
        grads = {name: param.grad for name, param in stepped}
        for _, param in stepped:
            param.grad = None
        for chunk in self.chunks(stepped):
            for name, param in chunk:
                param.grad = grads[name]
            held = {
                name: local(param.detach())[~self.keep[name]].clone() for name, param in chunk if name in self.partial
            }
            optimizer.step()
            with torch.no_grad():
                for name, param in chunk:
                    if name in held:
                        local(param)[~self.keep[name]] = held[name]
                    param.grad = None

    @torch.no_grad()
    def step_at_once(self, optimizer, named_params) -> None:
        """One ``optimizer.step()`` with every non-salient weight held meanwhile: for a loss-scaling optimizer
        (fp16), whose scaler must step once per update."""
        params = list(named_params)
        held = {
            name: local(param.detach())[~self.keep[name]].clone() for name, param in params if name in self.partial
        }
        optimizer.step()
        for name, param in params:
            if name in held:
                local(param)[~self.keep[name]] = held[name]


def compute_saliency_mask(
    accelerator: Accelerator,
    model: torch.nn.Module,
    method: UnlearningMethod,
    forget_sampler: BatchSampler,
    remain_sampler: BatchSampler,
) -> Mask:
    """Fisher-ratio mask on the original weights; each process squares the gradient averaged over processes.

    The unwrapped denoiser runs, so that DDP does not reduce (it would reduce after the streamed Fisher has squared):
    each gradient is all-reduced here, then squared and freed as backward produces it. Under FSDP the sharded model
    runs and its reduced shards are squared after each backward. With LoRA adapters the Fisher is measured on the
    adapted modules' base weights and the mask is the adapters' (:func:`sfr_diffusion.adapters.adapter_mask`)."""
    family, cfg = method.family, method.config
    raw_model = accelerator.unwrap_model(model)  # names without DDP's "module." prefix; the same Parameters
    adapted = bool(adapter_layers(raw_model))
    sharded = is_sharded(accelerator)
    forward_model = model if sharded else raw_model

    def losses(sampler):
        for i in range(cfg.mask_batches):
            batch = sampler.batch(i, accelerator.process_index, accelerator.num_processes)
            x0 = family.encode(batch.images.to(accelerator.device))
            yield lambda b=batch, x=x0: family.diffusion_loss(forward_model, x, b.labels.to(x.device), b.draw).mean()

    def grad_scale() -> float:  # fp16 scales the loss before backward; the Fisher needs true gradients
        return accelerator.scaler.get_scale() if accelerator.scaler is not None else 1.0

    def reduce(grad: torch.Tensor) -> torch.Tensor:
        return accelerator.reduce(grad, reduction="mean")

    options = dict(grad_scale=grad_scale, streamed=not sharded)
    if accelerator.num_processes > 1 and not sharded:
        options["reduce"] = reduce
    mask = {}
    with base_weights_trainable(raw_model) if adapted else contextlib.nullcontext():
        measured = {name: p for name, p in raw_model.named_parameters() if p.requires_grad}
        for names in weight_groups(measured, method.mask_groups):  # one group's estimates at a time
            options["measure"] = names
            fisher_forget = diagonal_fisher(raw_model, losses(forget_sampler), accelerator.backward, **options)
            fisher_remain = diagonal_fisher(raw_model, losses(remain_sampler), accelerator.backward, **options)
            mask |= method.saliency_mask(fisher_forget, fisher_remain)
            del fisher_forget, fisher_remain
    method.check_mask(mask)
    return adapter_mask(raw_model, mask) if adapted else mask


def list_checkpoints(checkpoints_dir: Path | None) -> list[Path]:
    """Complete checkpoints, oldest first (a ``.partial`` folder is an interrupted save and is ignored)."""
    if checkpoints_dir is None or not checkpoints_dir.is_dir():
        return []
    found = [p for p in checkpoints_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def check_checkpoints_dir(args: TrainingArguments) -> None:
    """Refuse, before any work, a checkpoints folder this run must not write into: a file, a folder with files that
    sfr-diffusion did not write, or the checkpoints of an earlier run when this run does not resume it."""
    folder = args.checkpoints_path
    if folder is None or not folder.exists():
        return
    if not folder.is_dir():
        raise FileExistsError(f"checkpoints_dir {folder} is a file; choose a folder that does not exist yet.")
    if any(folder.iterdir()) and not (folder / CHECKPOINTS_MARKER).is_file():
        raise FileExistsError(
            f"checkpoints_dir {folder} holds files that sfr-diffusion did not write (no {CHECKPOINTS_MARKER}); it is "
            "never written into: choose a folder that does not exist yet."
        )
    if args.resume_from_checkpoint is None and list_checkpoints(folder):
        raise FileExistsError(
            f"{folder} holds checkpoints of an earlier run: pass --resume_from_checkpoint latest to continue it, or "
            "choose another --output_dir or --checkpoints_dir."
        )


def make_checkpoints_dir(args: TrainingArguments) -> Path:
    """Create the checkpoints folder (after `check_checkpoints_dir`), marked as ours."""
    folder = args.checkpoints_path
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / CHECKPOINTS_MARKER
    if not marker.exists():
        marker.write_text(json.dumps({"written_by": "sfr-diffusion", "contents": "training checkpoints"}) + "\n")
    return folder


def resolve_resume(args: TrainingArguments) -> Path | None:
    """The checkpoint to resume from, checked to be one before any work; None to start from step 0."""
    if args.resume_from_checkpoint is None:
        return None
    if args.resume_from_checkpoint == "latest":
        found = list_checkpoints(args.checkpoints_path)
        if not found:
            logger.warning(
                "--resume_from_checkpoint latest: %s holds no checkpoint (the earlier run saved none: "
                "--checkpointing_steps was off, or it stopped before the first one); starting from step 0.",
                args.checkpoints_dir,
            )
            return None
        path = found[-1]
    else:
        path = Path(args.resume_from_checkpoint)
        if not path.is_dir():
            raise FileNotFoundError(
                f"--resume_from_checkpoint {path} does not exist (give a checkpoint-N folder, or 'latest' for the "
                "newest one)."
            )
    missing = [names[0] for names in CHECKPOINT_CONTENTS if not any((path / name).exists() for name in names)]
    if missing:
        raise ValueError(
            f"--resume_from_checkpoint {path} is not an sfr-diffusion checkpoint: it lacks {', '.join(missing)}."
        )
    return path


def checkpoint_mask_path(args: TrainingArguments, resume_from: Path) -> Path:
    """The original model's saliency mask of a checkpoint: in its checkpoints folder (written before step 1)."""
    beside = resume_from.parent / MASK_FILE
    return beside if beside.is_file() else args.checkpoints_path / MASK_FILE


def register_diffusers_checkpoint_hooks(accelerator: Accelerator) -> None:
    """Store the denoiser inside accelerate checkpoints in diffusers format (``denoiser/``), loadable on its own."""

    def save_hook(models, weights, output_dir):
        for model in models:
            # Sharded (FSDP; accelerate saves its own shards too): every process takes part in gathering the weights.
            model = unsharded_copy(accelerator, model) if is_sharded(accelerator) else accelerator.unwrap_model(model)
            if not accelerator.is_main_process:
                continue
            folder = Path(output_dir) / "denoiser"
            if adapter_layers(model):  # the adapters alone: the base weights never change
                folder.mkdir(parents=True, exist_ok=True)
                model.save_config(folder)
                save_file(adapter_state_dict(model), folder / CHECKPOINT_ADAPTERS_FILE)
            else:
                model.save_pretrained(folder)
        while weights:
            weights.pop()

    def load_hook(models, input_dir):
        # Under FSDP `models` is empty: accelerate loads the sharded model from its own shards.
        while models:
            model = accelerator.unwrap_model(models.pop())
            folder = Path(input_dir) / "denoiser"
            saved_adapters = (folder / CHECKPOINT_ADAPTERS_FILE).is_file()
            if saved_adapters != bool(adapter_layers(model)):
                raise ValueError(
                    f"{input_dir} was saved {'with' if saved_adapters else 'without'} LoRA adapters: resume it with "
                    "the --lora_rank setting it was trained with."
                )
            if saved_adapters:
                from peft import set_peft_model_state_dict

                adapters = load_file(folder / CHECKPOINT_ADAPTERS_FILE)
                set_peft_model_state_dict(model, adapters, adapter_name=ADAPTER_NAME)
            else:
                model.load_state_dict(type(model).from_pretrained(folder).state_dict())

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def save_checkpoint(accelerator: Accelerator, args: TrainingArguments, step: int, progress: dict) -> None:
    """Write ``checkpoint-{step}`` atomically (``.partial``, then rename), then rotate: never fewer than one whole."""
    final = args.checkpoints_path / f"checkpoint-{step}"
    partial = final.with_name(final.name + ".partial")
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()  # every process has written its random states before the rename
    if accelerator.is_main_process:
        (partial / PROGRESS_FILE).write_text(json.dumps(progress))
        if final.exists():  # resumed from an older checkpoint: this step's state replaces the abandoned one
            shutil.rmtree(final)
        partial.rename(final)
        if args.checkpoints_total_limit is not None:
            existing = list_checkpoints(args.checkpoints_path)
            for old in existing[: max(0, len(existing) - args.checkpoints_total_limit)]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()


def run_erasure(
    *,
    accelerator: Accelerator,
    method: UnlearningMethod,
    forget: LabelledImages,
    remain: LabelledImages,
    args: TrainingArguments,
    evaluate: Callable[..., dict] | None = None,
    callbacks: tuple[Callable[[PhaseEvent], None], ...] = (),
) -> TrainingOutcome:
    """Erase with `method`; the family's denoiser is trained in place. Evaluates every ``eval_every`` steps.

    `evaluate` is called as ``evaluate(step=n)`` on the main process (a preset's evaluator draws fresh noise per
    step). With ``args.stop_when_forgotten`` the run ends after the tracked evaluation at which the forgetting rule
    (:mod:`sfr_diffusion.forgetting`) has held that many evaluations in a row; ``TrainingOutcome.steps`` is then the
    iterations run.

    The family must be prepared for training (:meth:`DiffusionFamily.prepared_for_training`) and
    ``args.learning_rate`` set; :func:`sfr_diffusion.erase` does both.
    """
    if args.learning_rate is None:
        raise ValueError("run_erasure needs a learning_rate (erase() takes the family's default).")
    family = method.family
    model = family.denoiser
    select_trainable(model, args.trains)
    model.train()
    if args.gradient_checkpointing:
        if not getattr(model, "_supports_gradient_checkpointing", False):
            raise ValueError(f"{type(model).__name__} does not support gradient checkpointing.")
        model.enable_gradient_checkpointing()
    optimizer = OPTIMIZERS[args.optimizer](
        [p for p in model.parameters() if p.requires_grad],
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    samplers = {
        "forget": BatchSampler(forget, family, args.forget_batch_size, seed=args.seed, stream=FORGET_STREAM),
        "remain": BatchSampler(remain, family, args.remain_batch_size, seed=args.seed, stream=REMAIN_STREAM),
    }
    tracked = evaluate is not None and args.eval_every is not None
    check_sharding(accelerator, lora=bool(adapter_layers(model)), tracked=tracked, mask_groups=method.mask_groups)
    register_diffusers_checkpoint_hooks(accelerator)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)

    check_checkpoints_dir(args)
    resume_from = resolve_resume(args)
    if args.checkpoints_path is not None and accelerator.is_main_process:
        make_checkpoints_dir(args)
    start = time.perf_counter()
    mask, mask_stats, whole_mask = _original_model_mask(accelerator, model, method, forget, remain, args, resume_from)
    mask_seconds = time.perf_counter() - start

    start_step, history, resumed_seconds = 0, [], 0.0
    if resume_from is not None:
        start_step = int(resume_from.name.split("-")[-1])
    start = time.perf_counter()
    # Before a resumed checkpoint's weights are loaded: the denoiser is still θ₀.
    _precompute_original(accelerator, raw_model, method, samplers, range(start_step, args.max_train_steps))
    original_seconds = time.perf_counter() - start
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        progress_path = resume_from / PROGRESS_FILE
        saved = json.loads(progress_path.read_text()) if progress_path.exists() else {}
        history, resumed_seconds = saved.get("history", []), saved.get("train_seconds", 0.0)
        mask_seconds = saved.get("mask_seconds", 0.0)  # the mask was computed by the interrupted run
        logger.info("Resumed from %s at step %d", resume_from, start_step)

    def reduce_sum(value: torch.Tensor) -> torch.Tensor:
        return accelerator.reduce(value.detach().clone(), reduction="sum")

    if args.stop_when_forgotten and not tracked:
        logger.warning(
            "stop_when_forgotten: this run has no evaluator, so it runs all %d iterations.", args.max_train_steps
        )
    stop_after = args.stop_when_forgotten if tracked else None
    if tracked and start_step == 0:
        history.append({"step": 0, **_evaluate_on_main(accelerator, raw_model, evaluate, 0)})
    # Checked before the first step too: a resumed run that had already stopped there runs no further iteration.
    stop = _held_long_enough(accelerator, history, stop_after)

    progress = tqdm(
        range(start_step, start_step if stop else args.max_train_steps),
        initial=start_step,
        total=args.max_train_steps,
        desc=f"{method.name}",
        disable=not accelerator.is_local_main_process,
    )
    start, eval_seconds, steps_run = time.perf_counter(), 0.0, start_step
    for step in progress:
        logs, drawn = {}, {}
        for phase in method.phases:
            batch = _draw(samplers, phase.data, step, accelerator, drawn)
            with accelerator.autocast():  # frozen parts and frozen copies run in the weight dtype too
                terms = method.loss(
                    phase,
                    model,
                    batch,
                    step=step,
                    total_steps=args.max_train_steps,
                    reduce_sum=reduce_sum,
                    num_processes=accelerator.num_processes,
                )
            _optimizer_step(accelerator, model, optimizer, terms["loss"], phase, mask)
            for callback in callbacks:
                callback(
                    PhaseEvent(
                        step=step, phase=phase, terms=terms, optimizer=optimizer, model=raw_model, history=history
                    )
                )
            for key, value in terms.items():
                gathered = accelerator.gather(value.detach().float().reshape(1))
                quartile = "_q" in key  # NaN there means an empty timestep quartile on some process
                logs[f"{phase.name}/{key}"] = float(gathered.nanmean() if quartile else gathered.mean())
        losses = {k: v for k, v in logs.items() if k.endswith("/loss")}
        if any(not math.isfinite(v) for v in losses.values()):
            raise FloatingPointError(f"Non-finite loss at step {step}: {losses}")
        accelerator.log({k: v for k, v in logs.items() if math.isfinite(v)}, step=step + 1)
        progress.set_postfix({k: f"{v:.3g}" for k, v in logs.items() if k.endswith("/loss")})
        steps_run = step + 1
        if tracked and steps_run % args.eval_every == 0:
            eval_start = time.perf_counter()
            history.append({"step": steps_run, **_evaluate_on_main(accelerator, raw_model, evaluate, steps_run)})
            stop = _held_long_enough(accelerator, history, stop_after)
            eval_seconds += time.perf_counter() - eval_start
        if args.checkpointing_steps and steps_run % args.checkpointing_steps == 0:
            seconds = resumed_seconds + time.perf_counter() - start - eval_seconds
            state = {"history": history, "train_seconds": seconds, "mask_seconds": mask_seconds}
            save_checkpoint(accelerator, args, steps_run, state)
        if stop:  # after this step's checkpoint, so that one holds the evaluations that decided the stop
            break
    progress.close()
    if stop:
        logger.info(
            "Forgotten: FA ≤ 1%% with RA ≥ base − 1 point held for %d evaluations; stopped after %d of %d iterations.",
            stop_after,
            steps_run,
            args.max_train_steps,
        )
    if isinstance(method.original, PrecomputedOriginal):
        method.original.discard()  # what an early stop left unasked
    # Evaluation is measurement, not erasure; after a resume the interrupted part's seconds count too, and θ₀'s
    # precomputed targets are part of the training work (a frozen copy would have computed them in the steps).
    train_seconds = resumed_seconds + original_seconds + time.perf_counter() - start - eval_seconds
    # Remove accelerate's autocast wrapper from the denoiser's forward: exports and "after" metrics run in the
    # precision the user loads the pipeline in, like the "before" metrics.
    accelerator.unwrap_model(model, keep_fp32_wrapper=False).eval()
    return TrainingOutcome(
        steps=steps_run,
        mask_seconds=mask_seconds,
        train_seconds=train_seconds,
        mask_statistics=mask_stats,
        history=history,
        mask=whole_mask,
        denoiser=unsharded_copy(accelerator, model) if is_sharded(accelerator) else None,
    )


def _precompute_original(accelerator, denoiser, method: UnlearningMethod, samplers: dict, steps: range) -> None:
    """Ask θ₀ every question `steps` will ask it, while `denoiser` is still θ₀, when the method's θ₀ is precomputed
    (:class:`sfr_diffusion.original.PrecomputedOriginal`): the same batches, in the same order, as training draws."""
    original = method.original
    if not isinstance(original, PrecomputedOriginal) or not steps:
        return
    with original.recording(denoiser), torch.no_grad():
        for step in tqdm(steps, desc="θ₀'s targets", disable=not accelerator.is_local_main_process):
            drawn = {}
            for phase in method.phases:
                batch = _draw(samplers, phase.data, step, accelerator, drawn)
                with accelerator.autocast():
                    method.original_targets(phase, batch)
    logger.info(
        "θ₀'s targets for iterations %d-%d precomputed: %.1f MiB on the CPU (no copy of the denoiser).",
        steps.start + 1,
        steps.stop,
        original.nbytes / 2**20,
    )


def _draw(samplers: dict, data: str | tuple[str, ...], step: int, accelerator, drawn: dict):
    """This process's share of the batch a phase draws: one batch, or a dict of them for a joint phase.

    A step's batch of a set is the same for every phase that draws it (a pure function of the step), so it is loaded
    once per step and kept in `drawn` (remap_others' forget step reads the remain step's batch).
    """
    if isinstance(data, str):
        if data not in drawn:
            drawn[data] = samplers[data].batch(step, accelerator.process_index, accelerator.num_processes)
        return drawn[data]
    return {name: _draw(samplers, name, step, accelerator, drawn) for name in data}


def _optimizer_step(accelerator, model, optimizer, loss, phase: Phase, mask: ForgetMask | None) -> None:
    """backward → mask (masked phases only) → clip (at the phase's own norm) → step, non-salient weights put back."""
    raw_model = accelerator.unwrap_model(model)
    accelerator.backward(loss)
    masked = phase.masked and mask is not None
    if masked:
        mask.mask_gradients(raw_model.named_parameters())
    if phase.max_grad_norm is not None:
        accelerator.clip_grad_norm_(model.parameters(), phase.max_grad_norm)
    if not masked:
        optimizer.step()
    elif accelerator.scaler is None:
        mask.step(optimizer, raw_model.named_parameters())
    else:
        mask.step_at_once(optimizer, raw_model.named_parameters())
    optimizer.zero_grad(set_to_none=True)


def _original_model_mask(accelerator, model, method, forget, remain, args, resume_from):
    """The saliency mask of the *original* weights: computed before the first step, reloaded when resuming.

    Returns it as the forget step applies it (a :class:`ForgetMask`), its statistics, and whole on the CPU for the
    export (under FSDP on the main process alone); three Nones for a method without a mask."""
    if not method.uses_mask:
        return None, None, None
    if resume_from is not None:
        mask_path = checkpoint_mask_path(args, resume_from)
        if not mask_path.exists():
            # Recomputing it from checkpoint weights would give a different mask than the original model's.
            raise FileNotFoundError(f"Cannot resume: the saliency mask {mask_path} of the original model is missing.")
        mask = load_mask(mask_path)
    else:
        family = method.family
        fisher_samplers = (
            BatchSampler(forget, family, args.forget_batch_size, seed=args.seed, stream=FISHER_FORGET_STREAM),
            BatchSampler(remain, family, args.remain_batch_size, seed=args.seed, stream=FISHER_REMAIN_STREAM),
        )
        mask = compute_saliency_mask(accelerator, model, method, *fisher_samplers)
    raw_model = accelerator.unwrap_model(model)
    check_mask_matches(mask, raw_model)
    # Under FSDP a computed mask is sharded like the weights (DTensors): gathered whole once, for the export and the
    # checkpoints folder; its statistics are over the whole mask either way.
    whole = gathered_mask(mask, keep=accelerator.is_main_process)
    if resume_from is None and args.checkpoints_path is not None and accelerator.is_main_process:
        save_mask(whole, args.checkpoints_path / MASK_FILE)
    return ForgetMask.from_mask(local_masks(mask, raw_model)), mask_statistics(mask), whole


def _evaluate_on_main(accelerator, raw_model, evaluate, step: int) -> dict:
    result = {}
    if accelerator.is_main_process:
        raw_model.eval()
        result = evaluate(step=step)
        raw_model.train()
    accelerator.wait_for_everyone()
    return result


def _held_long_enough(accelerator, history: list, needed: int | None) -> bool:
    """Whether the forgetting rule held at the last `needed` evaluations, base RA from step 0's (False when `needed`
    is None or there is no step-0 evaluation to compare with).

    Only the main process holds the metrics of the evaluations made in this run (the others record the step alone),
    so it decides and broadcasts the decision: every process stops after the same step. An error (an evaluation
    without FA or RA) is broadcast as well and raised everywhere, rather than leaving the other processes waiting.
    """
    if needed is None:
        return False
    decision = [False]
    if accelerator.is_main_process and history and history[0]["step"] == 0:
        base_ra = history[0].get("RA")
        if base_ra is None:
            decision[0] = "stop_when_forgotten: the step-0 evaluation measured no RA to compare later ones with."
        else:
            try:
                decision[0] = held_for(history, base_ra) >= needed
            except ValueError as error:  # an evaluation without FA or RA
                decision[0] = str(error)
    (decision,) = broadcast_object_list(decision)
    if isinstance(decision, str):
        raise ValueError(decision)
    return decision
