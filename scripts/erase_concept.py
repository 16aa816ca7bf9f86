"""Erase a class from a class-conditional diffusion pipeline with SFR-on and export a standard diffusers pipeline.

With no arguments it erases "three" from the bundled digits-world DDPM into ./outputs/erase-three:

    accelerate launch scripts/erase_concept.py

On your own class-conditional UNet2DModel pipeline (e.g. a CIFAR-10 one) with its training data:

    accelerate launch scripts/erase_concept.py \\
        --pretrained_model_name_or_path path/to/cifar10-ddpm --concept cat \\
        --dataset_name uoft-cs/cifar10 --image_column img --label_column label \\
        --output_dir outputs/cifar10-no-cat --max_train_steps 150 --forget_batch_size 128 --remain_batch_size 128 \\
        --mixed_precision bf16 --checkpointing_steps 50

Class erasure from a DiTPipeline (latent space; the bundled digits DiT, or e.g. facebook/DiT-XL-2-256 with
ImageNet data):

    accelerate launch scripts/erase_concept.py \
        --pretrained_model_name_or_path sfr_diffusion/assets/digits/dit --concept seven

Resume an interrupted run with the same command plus ``--resume_from_checkpoint latest``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import fields
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed

from sfr_diffusion.data import check_label_names, load_image_dataset, split_by_class
from sfr_diffusion.digits import load_digits_dataset
from sfr_diffusion.export import export_pipeline, render_model_card
from sfr_diffusion.families import family_for
from sfr_diffusion.methods import METHODS, get_method_class
from sfr_diffusion.pipelines import load_pipeline
from sfr_diffusion.training import MASK_FILE, TrainingArguments, run_erasure
from sfr_diffusion.world import bundled_path, class_names, digits_world_metrics, is_digits_world

logger = logging.getLogger("erase_concept")

# Defaults: the official DDPM recipe (Adam, α_0 = 10 with cosine decay, λ = 0.5, γ = 1, clipping 1.0 on both
# steps) with the paper's headline budget of 50 iterations, at batch 64 + 64 (official: 128 + 128) and learning rate
# 2e-3 (official: 1e-4), which the 0.18M-parameter digits DDPM needs to forget within 50 steps; see BENCHMARKS.md.
DEFAULTS = {"max_train_steps": 50, "forget_batch_size": 64, "remain_batch_size": 64}
# Per family, when --learning_rate is not given: measured on the digits world (BENCHMARKS.md). At 2e-3 the digits DiT
# forgets by iteration 10 but its remaining-class FID-digits triples by iteration 50; at 1e-3 it stays at the base.
DEFAULT_LEARNING_RATE = {"ddpm": 2e-3, "dit": 1e-3}
# Method options → the config field each sets; a method without that field ignores the option (and says so).
METHOD_OPTIONS = {
    **{
        name: name
        for name in (
            "forget_loss",
            "alpha",
            "temperature",
            "remain_weight",
            "gamma",
            "mask_batches",
            "forget_max_grad_norm",
            "remap_class",
        )
    },  # fmt: skip
    "no_mask": "use_mask",
    "no_cosine_decay": "cosine_decay",
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("model and target")
    model.add_argument("--pretrained_model_name_or_path", default=None, help="Default: the bundled digits DDPM.")
    model.add_argument("--concept", default="three", help="Class to erase: a name from id2label or an integer id.")
    model.add_argument("--method", default="sfr_on", choices=sorted(METHODS))
    model.add_argument("--output_dir", default=None, help="Default: outputs/erase-<concept>.")
    data = parser.add_argument_group("data (default: the digits world's training split)")
    data.add_argument("--dataset_name", default=None)
    data.add_argument("--dataset_config_name", default=None)
    data.add_argument("--dataset_split", default="train")
    data.add_argument("--train_data_dir", default=None, help="An imagefolder with one sub-folder per class.")
    data.add_argument("--image_column", default="image")
    data.add_argument("--label_column", default="label")
    data.add_argument("--cache_dir", default=None)
    train = parser.add_argument_group("training")
    train.add_argument("--max_train_steps", type=int, default=DEFAULTS["max_train_steps"])
    train.add_argument(
        "--learning_rate", type=float, default=None, help=f"Default per family: {DEFAULT_LEARNING_RATE}."
    )
    train.add_argument("--optimizer", default="adam", choices=["adam", "adamw"])
    train.add_argument("--adam_weight_decay", type=float, default=0.0)
    train.add_argument("--forget_batch_size", type=int, default=DEFAULTS["forget_batch_size"], help="Global batch.")
    train.add_argument("--remain_batch_size", type=int, default=DEFAULTS["remain_batch_size"], help="Global batch.")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--trainable",
        default="all",
        choices=["all", "cross_attention", "no_cross_attention"],
        help="Which denoiser weights train (cross-attention exists in text-conditioned UNets only).",
    )
    train.add_argument("--mixed_precision", default=None, choices=["no", "fp16", "bf16"])
    train.add_argument("--gradient_checkpointing", action="store_true")
    train.add_argument("--checkpointing_steps", type=int, default=None)
    train.add_argument("--checkpoints_total_limit", type=int, default=None)
    train.add_argument("--resume_from_checkpoint", default=None, help='A checkpoint folder or "latest".')
    train.add_argument("--report_to", default=None, help='"tensorboard", "wandb", "all"... (default: none).')
    sfr = parser.add_argument_group("SFR-on (defaults: the official DDPM CIFAR-10 setting)")
    sfr.add_argument("--forget_loss", default="ascent", choices=["ascent", "remap"])
    sfr.add_argument("--alpha", type=float, default=10.0, help="α_0, weight of the forget loss.")
    sfr.add_argument("--no_cosine_decay", action="store_true", help="Keep α constant instead of cosine decay.")
    sfr.add_argument("--temperature", type=float, default=0.5, help="λ of the adaptive forget weights.")
    sfr.add_argument("--remain_weight", type=float, default=1.0, help="β, weight of the remain loss.")
    sfr.add_argument("--gamma", type=float, default=1.0, help="Saliency threshold on F_f / F_r.")
    sfr.add_argument("--no_mask", action="store_true", help="Ablation: no saliency mask on the forget step.")
    sfr.add_argument("--mask_batches", type=int, default=4)
    sfr.add_argument("--forget_max_grad_norm", type=float, default=1.0)
    sfr.add_argument("--remain_max_grad_norm", type=float, default=1.0)
    sfr.add_argument("--remap_class", default=None, help="Target class of --forget_loss remap (default: null).")
    sfr.add_argument("--label_dropout", type=float, default=0.1)
    evaluation = parser.add_argument_group("evaluation (digits world only)")
    evaluation.add_argument("--skip_eval", action="store_true")
    evaluation.add_argument("--eval_every", type=int, default=None, help="Also track FA/RA every N steps.")
    evaluation.add_argument("--eval_samples_per_class", type=int, default=50)
    evaluation.add_argument("--guidance_scale", type=float, default=2.0)
    evaluation.add_argument("--num_inference_steps", type=int, default=20)
    return parser.parse_args(argv)


def load_base_pipeline(path: str | None):
    if path is None:
        return load_pipeline(bundled_path("ddpm")), "sfr_diffusion/assets/digits/ddpm (bundled digits-world DDPM)"
    return load_pipeline(path), path


def load_data(args, family, pipeline):
    channels, height, width = family.image_shape
    if height != width:
        raise ValueError(f"Only square images are supported, the model generates {height}×{width}.")
    kwargs = dict(resolution=height, channels=channels)
    if args.dataset_name or args.train_data_dir:
        dataset = load_image_dataset(
            dataset_name=args.dataset_name,
            dataset_config_name=args.dataset_config_name,
            train_data_dir=args.train_data_dir,
            split=args.dataset_split,
            cache_dir=args.cache_dir,
        )
        kwargs["image_column"] = args.image_column
    elif is_digits_world(pipeline):
        dataset = load_digits_dataset("train")
    else:
        raise ValueError("This model is not the digits world: pass --dataset_name or --train_data_dir.")
    return dataset, kwargs


def method_config_from_args(method_class, args: argparse.Namespace, family):
    """The chosen method's config from the command line: each field takes the option of the same name."""
    values = {
        **vars(args),
        "cosine_decay": not args.no_cosine_decay,
        "use_mask": not args.no_mask,
        "remap_class": None if args.remap_class is None else family.resolve_class(args.remap_class),
        "max_grad_norm": args.remain_max_grad_norm,  # single-phase methods clip like the remain step
    }
    used = {f.name for f in fields(method_class.config_class)}
    defaults = vars(parse_args([]))
    ignored = sorted(
        option
        for option, field in METHOD_OPTIONS.items()
        if field not in used and getattr(args, option) != defaults[option]
    )
    if ignored:
        logger.warning("--method %s does not use %s; they are ignored.", method_class.name, ", ".join(ignored))
    return method_class.config_class(**{name: values[name] for name in used})


def main(argv=None) -> dict:
    args = parse_args(argv)
    output_dir = Path(args.output_dir or f"outputs/erase-{args.concept}".replace(" ", "_"))
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        log_with=args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(args.seed)

    pipeline, base_model = load_base_pipeline(args.pretrained_model_name_or_path)
    pipeline.set_progress_bar_config(disable=True)
    family = family_for(pipeline)
    forget_class = family.resolve_class(args.concept)
    concept_name = class_names(pipeline).get(forget_class, str(forget_class))
    dataset, data_kwargs = load_data(args, family, pipeline)
    check_label_names(dataset, args.label_column, getattr(pipeline, "labels", None))
    with accelerator.main_process_first():
        forget, remain = split_by_class(dataset, [forget_class], label_column=args.label_column, **data_kwargs)
    logger.info(
        "Erasing %r (class %d): %d forget / %d remain images", concept_name, forget_class, len(forget), len(remain)
    )

    method_class = get_method_class(args.method)
    method_config = method_config_from_args(method_class, args, family)
    options = {f.name: getattr(args, f.name) for f in fields(TrainingArguments) if f.name in vars(args)}
    options["output_dir"] = str(output_dir)
    if options["learning_rate"] is None:
        options["learning_rate"] = DEFAULT_LEARNING_RATE.get(family.name, 1e-4)  # 1e-4: the paper's setting
    training_args = TrainingArguments(**options)
    pipeline.to(accelerator.device)
    method = method_class(method_config, family)

    evaluate = None
    if not args.skip_eval and is_digits_world(pipeline):

        def evaluate() -> dict:
            return digits_world_metrics(
                pipeline,
                [forget_class],
                samples_per_class=args.eval_samples_per_class,
                guidance_scale=args.guidance_scale,
                num_inference_steps=args.num_inference_steps,
                seed=args.seed,
            )

    metrics_before = evaluate() if evaluate and accelerator.is_main_process else None
    if accelerator.is_main_process:
        accelerator.init_trackers("sfr-diffusion", config={k: v for k, v in vars(args).items() if v is not None})
    result = run_erasure(
        accelerator=accelerator, method=method, forget=forget, remain=remain, args=training_args, evaluate=evaluate
    )
    accelerator.end_training()  # close trackers before the export moves logs/ into the new folder
    summary = {}
    if accelerator.is_main_process:
        metrics_after = evaluate() if evaluate else None
        family.denoiser.to(torch.float32)  # trained in place: the pipeline holds the erased weights
        summary = {
            "base_model": base_model,
            "erased": {"concept": concept_name, "class_id": forget_class},
            "family": family.name,
            "method": method.name,
            "paper": method.paper,
            "method_config": method_config.to_dict(),
            "training": {k: v for k, v in training_args.__dict__.items()},
            "mask_statistics": result.mask_statistics,
            "steps": result.steps,
            "seconds": {"mask": round(result.mask_seconds, 2), "train": round(result.train_seconds, 2)},
            "metrics": {"before": metrics_before, "after": metrics_after},
            "history": result.history,
            "num_processes": accelerator.num_processes,
        }
        card = render_model_card(
            base_model=base_model,
            erased=concept_name,
            method_name=method.name,
            paper=method.paper,
            steps=result.steps,
            seconds=result.mask_seconds + result.train_seconds,
            metrics_before=metrics_before,
            metrics_after=metrics_after,
            mask_statistics=result.mask_statistics,
            pipeline_class=type(pipeline).__name__,
        )
        mask_file = training_args.checkpoints_dir / MASK_FILE
        export_pipeline(
            pipeline,
            output_dir,
            unlearning_config=summary,
            model_card=card,
            extra_files={MASK_FILE: mask_file} if result.mask_statistics is not None else None,
        )
        brief = {k: summary[k] for k in ("erased", "steps", "seconds")}
        if metrics_after:
            brief["before"] = {k: metrics_before.get(k) for k in ("FA", "RA", "FID")}
            brief["after"] = {k: metrics_after.get(k) for k in ("FA", "RA", "FID")}
        print(json.dumps({"output_dir": str(output_dir), **brief}, indent=2))
    return summary


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    logger.info("done in %.1f s", time.perf_counter() - start)
