"""The public API: ``erase(pipeline, concept)`` erases in place and returns what was done; the result saves itself.

    >>> import sfr_diffusion, torch
    >>> pipe = sfr_diffusion.load_pipeline("digits-ddpm")           # the bundled class-conditional DDPM
    >>> result = sfr_diffusion.erase(pipe, "three")                  # SFR-on, 50 iterations, ~15 s on 2 CPU cores
    >>> result.metrics["after"]["FA"], result.metrics["after"]["RA"]
    >>> result.save_pretrained("outputs/digits-ddpm-erase-three")   # a standard diffusers folder
    >>> result = sfr_diffusion.erase(pipe, ["three", "seven"])       # several at once, with an FA for each
    >>> result.metrics["after"]["FA_per_concept"]                    # {"three": ..., "seven": ...}

The same call erases a class from a DiT (``load_pipeline("digits-dit")``, or ``facebook/DiT-XL-2-256`` with
``data=DataArguments(dataset_name=...)``) and a concept from Stable Diffusion (``load_pipeline("digits-sd")``, or
``CompVis/stable-diffusion-v1-4``, ``stabilityai/stable-diffusion-xl-base-1.0``,
``stabilityai/stable-diffusion-3-medium-diffusers`` or ``black-forest-labs/FLUX.1-dev`` with
``data=DataArguments(remain_prompts=[...])`` and ``method=SFROnConfig(remap_target="a painting")``). It runs in a
plain process or notebook (it builds its own ``Accelerator``) and under ``accelerate launch`` on N processes; give it
an ``Accelerator`` to reuse one. Under FSDP (``--config_file configs/accelerate_fsdp.yaml``) the denoiser trains
sharded over the processes; afterwards the main process's pipeline holds it whole (the others' keep their shards).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, broadcast_object_list, set_seed

from .adapters import (
    add_adapters,
    check_lora_loadable,
    fuse_adapters,
    has_adapters,
    is_adapter_weight,
    save_lora_export,
    target_module_names,
)
from .anchors import farthest_kept_class
from .arguments import EvaluationArguments
from .export import export_pipeline, render_model_card
from .families import cast_if_needed, family_for
from .forgetting import evaluation_seed
from .methods import METHODS, MethodConfig, get_method_class
from .presets import learning_rate_for, preset_for
from .saliency import Mask
from .sharding import check_sharding
from .sources import concept_names, default_anchor, resolve_concepts, resolve_data
from .training import (
    TRAINABLE,
    PhaseEvent,
    TrainingArguments,
    attention_backends,
    check_checkpoints_dir,
    make_checkpoints_dir,
    resolve_resume,
    run_erasure,
)

logger = logging.getLogger(__name__)

WEIGHT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# Adapters that start at zero need a larger step than full weights: on the digits SD, LoRA rank 8 at its 3e-4
# does not forget in 50 iterations, at 3e-3 it does by iteration 30 (BENCHMARKS.md, settings compared).
LORA_LEARNING_RATE_FACTOR = 10
HEADLINE_METRICS = ("FA", "FA_paraphrases", "RA", "FID")


@dataclass
class ErasureResult:
    """What :func:`erase` did. The pipeline it was given now holds the erased denoiser.

    ``concepts`` lists what was erased, in the order given; ``config`` is what the export's
    ``unlearning_config.json`` records (the full settings, per-class metrics, the history of tracked evaluations);
    ``metrics`` is ``{"before": ..., "after": ...}`` (None without an evaluator).
    """

    pipeline: object
    concepts: list[str]
    method: str
    steps: int
    seconds: dict
    mask_statistics: dict | None
    history: list
    metrics: dict
    config: dict
    model_card: str
    mask: Mask | None = field(default=None, repr=False)
    is_main_process: bool = True
    lora_config: object = field(default=None, repr=False)  # peft's LoraConfig when LoRA adapters were trained
    card_fields: dict = field(default_factory=dict, repr=False)  # what the model card is rendered from

    @property
    def has_adapters(self) -> bool:
        """Whether the erased denoiser holds LoRA adapters (trained with ``lora_rank`` and not fused yet)."""
        return self.lora_config is not None and has_adapters(family_for(self.pipeline).denoiser)

    @property
    def concept(self) -> str:
        """The erased concept, or the erased concepts joined by ", " (for display; :attr:`concepts` lists them)."""
        return ", ".join(self.concepts)

    def save_pretrained(
        self,
        output_dir: str | Path,
        *,
        overwrite: bool = False,
        fuse_lora: bool = False,
        push_to_hub: bool = False,
        hub_model_id: str | None = None,
        hub_token: str | None = None,
    ) -> Path:
        """Write the erased pipeline as a standard diffusers folder (atomic; with ``unlearning_config.json``, a
        model card and the saliency mask), and optionally upload it to the Hub as ``hub_model_id``.

        When LoRA adapters were trained, the export holds them alone as ``pytorch_lora_weights.safetensors``, for
        ``pipe.load_lora_weights(folder)`` on the base pipeline (:func:`sfr_diffusion.load_pipeline` loads such a
        folder whole); with `fuse_lora` they are first merged into the denoiser's weights, in place, and the export
        is a full pipeline. An existing `output_dir` is replaced only when it is an earlier export and `overwrite`
        is given (see :func:`sfr_diffusion.export.check_output_dir`). Only the main process writes.
        """
        output_dir = Path(output_dir)
        config, card, mask, writer = self.config, self.model_card, self.mask, None
        if self.has_adapters and fuse_lora:
            fuse_adapters(family_for(self.pipeline).denoiser)
            self.config["lora"]["fused"] = True
            config, mask = self.config, None  # the mask named adapter weights, which no longer exist
            card = self.model_card = render_model_card(**self.card_fields, lora=config["lora"])
        elif self.has_adapters:
            check_lora_loadable(self.pipeline)
            denoiser, lora_config = family_for(self.pipeline).denoiser, self.lora_config
            writer = functools.partial(save_lora_export, self.pipeline, denoiser, lora_config)
        if self.is_main_process:
            output_dir = export_pipeline(
                self.pipeline,
                output_dir,
                unlearning_config=config,
                model_card=card,
                saliency_mask=mask,
                history=self.history,
                overwrite=overwrite,
                writer=writer,
            )
            if push_to_hub:
                push_export(output_dir, hub_model_id or output_dir.name, token=hub_token)
        return output_dir

    def brief(self) -> dict:
        """A short, rounded summary for a terminal: what was erased (a name, or the list of several), the cost, the
        headline metrics (with several concepts also each one's FA, where the evaluator gives it)."""
        erased = self.concepts[0] if len(self.concepts) == 1 else list(self.concepts)
        summary = {"erased": erased, "method": self.method, "steps": self.steps, "seconds": self.seconds}
        before, after = self.metrics.get("before"), self.metrics.get("after")
        if after:
            keys = [k for k in HEADLINE_METRICS if after.get(k) is not None]
            if len(self.concepts) > 1 and after.get("FA_per_concept"):
                keys.append("FA_per_concept")
            summary["before"] = {k: _rounded(before.get(k)) for k in keys}
            summary["after"] = {k: _rounded(after.get(k)) for k in keys}
        return summary


def _rounded(value, digits: int = 3):
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    return round(value, digits) if isinstance(value, float) else value


def push_export(folder: Path, repo_id: str, *, token: str | None = None) -> str:
    """Upload an export folder to the Hub as a model repository (created if needed); returns its URL."""
    from huggingface_hub import create_repo, upload_folder

    repo = create_repo(repo_id, exist_ok=True, token=token)
    upload_folder(
        repo_id=repo.repo_id, folder_path=str(folder), token=token, commit_message="Erased with sfr-diffusion"
    )
    return str(repo)


def method_config_for(method: str | MethodConfig) -> MethodConfig:
    """A method name (its default config) or a method config → the config."""
    if isinstance(method, MethodConfig):
        return method
    if isinstance(method, str):
        return get_method_class(method).config_class()
    raise TypeError(f"method must be a name {sorted(METHODS)} or a method config, got {type(method).__name__}.")


def method_class_for(config: MethodConfig):
    for method_class in METHODS.values():
        if type(config) is method_class.config_class:
            return method_class
    raise ValueError(f"{type(config).__name__} is not the config of a registered method ({sorted(METHODS)}).")


def build_accelerator(training: TrainingArguments) -> Accelerator:
    """An ``Accelerator`` for one erasure: its mixed precision, trackers and checkpoints folder."""
    mixed_precision = training.mixed_precision
    if mixed_precision == "fp16" and not torch.cuda.is_available():
        logger.warning("mixed_precision fp16 needs a CUDA GPU and none was found: this run trains in fp32 (no).")
        mixed_precision = "no"
    folder = training.checkpoints_dir
    return Accelerator(
        mixed_precision=mixed_precision,
        log_with=training.report_to,
        project_config=ProjectConfiguration(
            project_dir=folder, logging_dir=None if folder is None else f"{folder}/logs"
        ),
    )


def evaluator_for(evaluate, pipeline, concepts: Sequence[str], preset, seed: int) -> Callable[..., dict] | None:
    """``evaluate``: None (the preset's evaluator at its defaults, if any), False (none), EvaluationArguments (the
    preset's evaluator with them, if any) or a callable ``pipeline → metrics``.

    The evaluator returned takes the tracked step (``step=n``; None before and after erasing). The preset's one
    judges samples drawn with ``evaluation_seed(seed, step)``: fresh noise at every tracked step, `seed` itself before
    and after (see :func:`sfr_diffusion.forgetting.evaluation_seed`); its metrics record it as ``"seed"``."""
    if evaluate is False:
        return None
    if callable(evaluate) and not isinstance(evaluate, EvaluationArguments):
        return lambda step=None: evaluate(pipeline)
    if evaluate is not None and not isinstance(evaluate, EvaluationArguments):
        raise TypeError(f"evaluate must be None, False, EvaluationArguments or a callable, got {evaluate!r}.")
    if preset is None or preset.evaluate is None:
        if evaluate is not None:
            logger.info("No evaluator knows this model (only the digits world has a judge): FA/RA are not measured.")
        return None
    settings = evaluate or EvaluationArguments()

    def evaluator(step: int | None = None) -> dict:
        drawn = evaluation_seed(seed, step)
        return {**preset.evaluate(pipeline, list(concepts), settings, drawn), "seed": drawn}

    return evaluator


def erase(
    pipeline,
    concept: str | int | Sequence[str | int],
    *,
    method: str | MethodConfig = "sfr_on",
    data=None,
    training: TrainingArguments | None = None,
    evaluate=None,
    callbacks: Sequence[Callable[[PhaseEvent], None]] = (),
    accelerator: Accelerator | None = None,
    base_model: str | None = None,
) -> ErasureResult:
    """Erase `concept` (or several concepts at once) from `pipeline` in place and return what was done.

    Args:
        pipeline: a class-conditional DDPM (``ClassConditionalDDPMPipeline``), a ``DiTPipeline``, a
            ``StableDiffusionPipeline``, ``StableDiffusionXLPipeline``, ``StableDiffusion3Pipeline`` or
            ``FluxPipeline`` (see :func:`sfr_diffusion.load_pipeline`).
        concept: a class name from ``id2label`` or a class id; for text-to-image models the concept text. A list or
            tuple erases several at once: the forget set holds each one's images, the remain set none of them, and
            the preset's evaluator reports each one's FA as ``FA_per_concept``. A string is always one concept
            (``"three,seven"`` is no class name; commas are part of prompts). An empty or repeated concept is an
            error.
        method: a method name (``"sfr_on"``, ``"ft"``, ``"ga"``, ``"rl"``, ``"salun"``, ``"esd"``) or its config
            (e.g. ``SFROnConfig(forget_loss="remap")``).
        data: None (the model's preset decides), a :class:`DataArguments`, a `datasets.Dataset` with a label or
            caption column, or a ``(forget, remain)`` pair of data sets (see :mod:`sfr_diffusion.sources`).
        training: :class:`TrainingArguments` (default: 50 iterations at batch 64 + 64, the family's learning rate).
        evaluate: None (the preset's evaluator, if the model has one), False, :class:`EvaluationArguments`, or a
            callable ``pipeline → dict`` run before and after (and every ``training.eval_every`` iterations).
        callbacks: called with a :class:`PhaseEvent` after every optimizer step.
        accelerator: reuse this ``Accelerator`` (default: one built from `training`).
        base_model: how the export names the original model (default: the pipeline's ``name_or_path``).

    Examples, one per family (the bundled digits world; each takes seconds on a CPU)::

        from sfr_diffusion import SFROnConfig, erase, load_pipeline

        result = erase(load_pipeline("digits-ddpm"), "three")
        result = erase(load_pipeline("digits-dit"), "seven")
        result = erase(load_pipeline("digits-ddpm"), ["three", "seven"])  # several at once
        result = erase(load_pipeline("digits-sd"), "three", method=SFROnConfig(remap_target="a blank image"))
        result.save_pretrained("outputs/digits-sd-erase-three")
    """
    training = training or TrainingArguments()
    method_config = method_config_for(method)
    method_class = method_class_for(method_config)
    family = family_for(pipeline)
    preset = preset_for(pipeline)
    names = concept_names(concept)
    # An unknown class, or one class named twice, is an error now, not after the data.
    conditions = resolve_concepts(family, names)
    check_checkpoints_dir(training)
    resolve_resume(training)  # a checkpoint that cannot be resumed from is an error now, not after the data
    # Family defaults are resolved here, so that the export records what ran.
    if training.learning_rate is None:
        factor = LORA_LEARNING_RATE_FACTOR if training.lora_rank is not None else 1
        training = replace(training, learning_rate=learning_rate_for(family, preset) * factor)
    by_family = {"forget_loss": family.default_forget_loss, "adversarial_steps": family.default_adversarial_steps}
    unset = {name: value for name, value in by_family.items() if getattr(method_config, name, False) is None}
    method_config = replace(method_config, **unset)
    method_class.check_config(method_config, family)
    family.check_trainable(training.trainable)  # e.g. cross-attention in a transformer that has none
    _check_remap_target(method_config, family, preset, names, conditions)
    adapted_modules = _lora_modules(family, training)
    own_accelerator = accelerator is None
    accelerator = accelerator or build_accelerator(training)
    check_sharding(accelerator, lora=training.lora_rank is not None, tracked=training.eval_every is not None)
    set_seed(training.seed)
    pipeline.to(accelerator.device)

    target = resolve_data(
        data, family, names, preset=preset, seed=training.seed, main_process_first=accelerator.main_process_first
    )
    logger.info(
        "Erasing %s (%s, conditions %s): %d forget / %d remain images",
        target.names, family.name, target.conditions, len(target.forget), len(target.remain),
    )  # fmt: skip
    evaluator = evaluator_for(evaluate, pipeline, target.names, preset, training.seed)
    main = accelerator.is_main_process
    tracked = evaluator is not None and training.eval_every is not None  # the run measures step 0 itself
    metrics_before = evaluator() if evaluator and main and not tracked else None
    if main and training.checkpoints_dir is not None:
        make_checkpoints_dir(training)  # before the trackers write their logs into it
    if own_accelerator and training.report_to:
        accelerator.init_trackers("sfr-diffusion", config=_tracker_config(training, method_config))
    weight_dtype = WEIGHT_DTYPES.get(accelerator.mixed_precision, torch.float32)
    lora_config = None
    if adapted_modules:  # the pipeline keeps them: it holds the erased model, base weights plus adapters
        alpha = training.lora_alpha or training.lora_rank
        lora_config = add_adapters(family.denoiser, adapted_modules, training.lora_rank, alpha, training.seed)
    with (
        family.prepared_for_training(weight_dtype, trains=training.trains),
        attention_backends(cudnn=training.cudnn_attention),
    ):
        anchor = target.anchor
        if method_class.picks_anchor(method_config) and not family.text_conditioned:
            with accelerator.autocast():
                anchor = str(farthest_kept_class(family, target.forget, target.conditions, seed=training.seed))
            # The main process's pick for every process: a near tie must not split them over two targets.
            (anchor,) = broadcast_object_list([anchor])
        method_instance = method_class(method_config, family, anchor=anchor, original=training.original)
        outcome = run_erasure(
            accelerator=accelerator,
            method=method_instance,
            forget=target.forget,
            remain=target.remain,
            args=training,
            evaluate=evaluator,
            callbacks=tuple(callbacks),
        )
    if outcome.denoiser is not None:  # trained sharded (FSDP): the main process's pipeline gets the denoiser whole
        _replace_denoiser(pipeline, family, outcome.denoiser)
    if own_accelerator:
        accelerator.end_training()
    if tracked and main:
        metrics_before = {k: v for k, v in outcome.history[0].items() if k != "step"}
    metrics_after = evaluator() if evaluator and main else None

    base_model = base_model or str(getattr(pipeline, "name_or_path", "") or "an in-memory pipeline")
    seconds = {"mask": round(outcome.mask_seconds, 2), "train": round(outcome.train_seconds, 2)}
    config = {
        "base_model": base_model,
        "erased": {**target.summary(family), **_anchor_summary(method_instance, family)},
        "family": family.name,
        "method": method_class.name,
        "paper": method_class.paper,
        "method_config": method_config.to_dict(),
        "training": asdict(training),
        "mask_statistics": outcome.mask_statistics,
        "steps": outcome.steps,
        "seconds": seconds,
        "metrics": {"before": metrics_before, "after": metrics_after},
        "history": outcome.history,
        "num_processes": accelerator.num_processes,
    }
    if lora_config is not None:
        trained = [p for name, p in family.denoiser.named_parameters() if is_adapter_weight(name)]
        config["lora"] = {
            "rank": training.lora_rank,
            "alpha": lora_config.lora_alpha,
            "modules": len(adapted_modules),
            "trained_parameters": sum(p.numel() for p in trained),
            "fused": False,
        }
    card_fields = dict(
        base_model=base_model,
        erased=target.names,
        method_name=method_class.name,
        paper=method_class.paper,
        steps=outcome.steps,
        seconds=outcome.mask_seconds + outcome.train_seconds,
        metrics_before=metrics_before,
        metrics_after=metrics_after,
        mask_statistics=outcome.mask_statistics,
        pipeline_class=type(pipeline).__name__,
    )
    card = render_model_card(**card_fields, lora=config.get("lora"))
    return ErasureResult(
        pipeline=pipeline,
        concepts=target.names,
        method=method_class.name,
        steps=outcome.steps,
        seconds=seconds,
        mask_statistics=outcome.mask_statistics,
        history=outcome.history,
        metrics={"before": metrics_before, "after": metrics_after},
        config=config,
        model_card=card,
        mask=outcome.mask,
        is_main_process=main,
        lora_config=lora_config,
        card_fields=card_fields,
    )


def _replace_denoiser(pipeline, family, denoiser: torch.nn.Module) -> None:
    """Put `denoiser` into `pipeline` in place of the family's, on its device and in its dtype."""
    name = next(key for key, value in pipeline.components.items() if value is family.denoiser)
    before = next(family.denoiser.parameters())
    setattr(pipeline, name, cast_if_needed(denoiser, before.dtype).to(before.device))


def _lora_modules(family, training: TrainingArguments) -> list[str]:
    """The modules that get LoRA adapters (none without ``lora_rank``), checked before any data work."""
    if training.lora_rank is None:
        return []
    if has_adapters(family.denoiser):
        raise ValueError(
            f"The {type(family.denoiser).__name__} already holds LoRA adapters: fuse them into its weights (or load "
            "the pipeline without them) before erasing with --lora_rank."
        )
    return target_module_names(family.denoiser, training.lora_targets, TRAINABLE[training.trainable])


def _check_remap_target(method_config, family, preset, names: list[str], conditions: list[int]) -> None:
    """A remap onto an erased concept (the explicit target, or a text model's default anchor) would pull the concepts
    onto one of themselves: refuse it before any data work."""
    if getattr(method_config, "forget_loss", None) != "remap":
        return
    target = method_config.remap_target
    if target is None and family.text_conditioned:
        target = default_anchor(preset)
    if target is not None and family.resolve_class(target) in conditions:
        raise ValueError(
            f"The remap target {target!r} is erased here ({names}): remap onto a class or prompt that is kept "
            "(--remap_target)."
        )


def _anchor_summary(method, family) -> dict:
    """The class or prompt the concepts were remapped onto, when the method remapped them onto one."""
    condition = getattr(method, "remap_condition", None)
    if condition is None:
        return {}
    return {"anchor_concept": family.condition_name(condition)}


def _tracker_config(training: TrainingArguments, method_config: MethodConfig) -> dict:
    values = {**asdict(training), **method_config.to_dict()}
    return {k: v for k, v in values.items() if isinstance(v, int | float | str | bool)}
