"""Cost of SFR-on at real size: seconds per iteration, its ratio to one plain fine-tuning pass, peak GPU memory.

    python benchmarks/benchmark_gpu.py --all --variants full lora --write  # every family, full weights and LoRA
    python benchmarks/benchmark_gpu.py --all --write                # every family below, one BENCHMARKS.md section
    python benchmarks/benchmark_gpu.py --family dit --write         # DiT-XL/2 at 256 px, batch 32, bf16
    python benchmarks/benchmark_gpu.py --family sd --write          # SD v1.4 UNet at 512 px, batch 8
    python benchmarks/benchmark_gpu.py --family sdxl --write        # SDXL base 1.0 UNet at 1024 px, batch 4
    python benchmarks/benchmark_gpu.py --family sd3 --write         # SD3 medium transformer at 1024 px, batch 4
    python benchmarks/benchmark_gpu.py --family flux --write        # FLUX.1-dev at 1024 px, batch 2, extrapolated
    python benchmarks/benchmark_gpu.py --family flux --variants full lora --no_cudnn_attention  # as run on an H200
    python benchmarks/benchmark_gpu.py --family sd sdxl --tiny      # the same code on tiny configs (CPU smoke run)
    accelerate launch --config_file configs/accelerate_fsdp.yaml --num_processes 8 benchmarks/benchmark_gpu.py \
        --family flux --flux_depths 19 --write                      # the whole FLUX.1-dev, sharded over 8 GPUs

Random weights in the layouts of the real checkpoints (``sfr_diffusion.testing.layouts``; no hub access is needed),
created directly on the GPU: the point is the cost of the method, not its effect. SFR-on runs ``--iterations``
iterations (forget step + remain step, batch ``--batch_size`` each) after ``--warmup`` ones; FT runs the same number
of single remain passes at the same batch. Both go through ``sfr_diffusion.erase()`` (without evaluation), so the
ratio includes everything an iteration does (masking, clipping, both optimizer steps, the frozen original's
predictions that the remap and the remain distillation take). Each family is erased the way it is configured for
real: DiT forgets class 0 with its default forget loss (a remap onto the kept class the original tells farthest from
it); the text-to-image families forget the captions that name "cat" by remapping them onto the empty prompt (the
anchor), half of the random images being captioned "a photo of a cat" and half "a photo of a dog". Resolutions are
the checkpoints' own (1024 px for SDXL, SD3 and FLUX.1), AdamW, bf16 autocast with fp32 trained weights, no gradient
checkpointing unless ``--gradient_checkpointing``; the default batches are sized to fit one 141 GB H200 (an
estimate, :data:`DEFAULT_BATCH_SIZE`; ``--batch_size`` overrides it for every family measured).

``--variants full lora`` measures each family twice: training its weights (``full``, the default) and training LoRA
adapters of rank ``--lora_rank`` on the attention projections (``lora``: ``TrainingArguments(lora_rank=...)``, the
family's learning rate times ten, θ₀ the denoiser with its adapters off); the LoRA rows are marked as such.

FLUX.1-dev's 11.9B-parameter transformer does not fit one card for full fine-tuning (fp32 weights, gradients and
AdamW's two moments alone are 16 bytes a parameter, 190 GB; SFR-on adds the frozen bf16 original and the mask). On
one card its cost is therefore measured on the FLUX.1-dev layout cut to ``--flux_depths`` (K double-stream + 2K
single-stream blocks for each K; FLUX.1-dev has 19 + 38, the same 1:2 proportion) and extrapolated linearly in K to
K = 19: time, memory and parameters all grow by a fixed amount per block. The measured depths are reported as well.
On several cards, ``--flux_depths 19`` under ``accelerate launch --config_file configs/accelerate_fsdp.yaml`` (FSDP2,
each process holding a shard of the weights, gradients and AdamW's moments) measures the whole transformer instead:
the batch is then global (split over the processes) and the peak memory is the main process's. LoRA runs on one card
(FSDP refuses LoRA adapters). ``--write`` puts the result into BENCHMARKS.md (one section for all the families
measured) with the card's name; under a launch of several processes the main one prints and writes.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import diffusers
import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from datasets import Dataset
from reporting import write_section

from sfr_diffusion import FTConfig, SFROnConfig, TrainingArguments, erase
from sfr_diffusion.families import family_for
from sfr_diffusion.testing.data import random_captioned_images, random_images
from sfr_diffusion.testing.layouts import (
    dit_pipeline,
    flux_pipeline,
    stable_diffusion_3_pipeline,
    stable_diffusion_pipeline,
    stable_diffusion_xl_pipeline,
)

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ("dit", "sd", "sdxl", "sd3", "flux")  # the order --all measures them in
BUILDERS = {
    "dit": dit_pipeline,
    "sd": stable_diffusion_pipeline,
    "sdxl": stable_diffusion_xl_pipeline,
    "sd3": stable_diffusion_3_pipeline,
    "flux": flux_pipeline,
}
REAL_SIZE = {"dit": "dit-xl-2-256", "sd": "sd-1.4", "sdxl": "sdxl-base-1.0", "sd3": "sd3-medium", "flux": "flux-dev"}
MODEL_NAMES = {
    "dit": "DiT-XL/2, 256 px",
    "sd": "SD v1.4 UNet, 512 px",
    "sdxl": "SDXL base 1.0 UNet, 1024 px",
    "sd3": "SD3 medium transformer, 1024 px",
    "flux": "FLUX.1-dev transformer, 1024 px",
}
# Per family, what fits one 141 GB H200 in bf16 without gradient checkpointing. Saved activations estimated on the
# meta device (flash attention): ≈ 6.4 GiB a 1024 px image for the SDXL UNet and the SD3 transformer, ≈ 0.74 GiB per
# Flux double block and 0.66 per single block. SFR-on holds ≈ 24 bytes a trained parameter (fp32 weights and
# gradients, AdamW's moments, the bf16 frozen original, the mask and the forget step's snapshot of the masked
# weights): SDXL 2.6B → 57 GiB + 4 × 6.4; SD3 2.0B → 45 GiB + T5-XXL (11 GiB) + 4 × 6.4; Flux at 4 + 8 blocks 2.6B →
# 57 GiB + T5-XXL + 2 × 8.3. Twice those activations still fit.
DEFAULT_BATCH_SIZE = {"dit": 32, "sd": 8, "sdxl": 4, "sd3": 4, "flux": 2}
FLUX_DEPTH = 19  # FLUX.1-dev: 19 double-stream blocks and 38 single-stream ones, two per double-stream block
DEFAULT_FLUX_DEPTHS = (2, 4)  # 2 + 4 and 4 + 8 blocks: 1.3B and 2.6B parameters
VARIANTS = ("full", "lora")  # what trains: the denoiser's weights, or LoRA adapters on its attention projections
DEFAULT_LORA_RANK = 8  # as in memory_erasure.py and the digits-world LoRA comparison
CONCEPT, CAPTIONS = "cat", ("a photo of a cat", "a photo of a dog")  # text families: the concept erased, the captions
LINEAR = ("seconds_per_iteration", "peak_memory_gib", "mask_seconds", "parameters")  # what grows by a fixed per block


def erasure_data(family, count: int) -> tuple[Dataset, str, dict]:
    """`count` random images at the family's resolution, the concept to erase from them, and the SFR-on settings
    that make it the family's configuration of the method."""
    _, resolution, _ = family.image_shape
    if family.text_conditioned:
        # Text-to-image concepts are remapped onto an anchor prompt; a model without a preset has the empty one.
        return (
            random_captioned_images(count, resolution, CAPTIONS),
            CONCEPT,
            {"forget_loss": "remap", "remap_target": ""},
        )
    return random_images(count, resolution), "0", {}


def flux_overrides(depth: int) -> dict[str, dict]:
    """The FLUX.1 layout cut to `depth` double-stream blocks and twice as many single-stream ones."""
    return {"transformer": {"num_layers": depth, "num_single_layers": 2 * depth}}


def time_method(
    method_name: str,
    family_name: str,
    args,
    batch_size: int,
    overrides: dict | None = None,
    lora_rank: int | None = None,
) -> dict:
    # The previous run's models (two denoisers and the optimizer state) must be gone before this one is measured.
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    AcceleratorState._reset_state(True)
    accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=args.tiny)
    # Created on the accelerator: a real-size layout initialises there in seconds (T5-XXL alone is 19 GB in fp32).
    pipeline = BUILDERS[family_name](
        "tiny" if args.tiny else REAL_SIZE[family_name], seed=0, overrides=overrides, device=accelerator.device
    )
    family = family_for(pipeline)
    dataset, concept, sfr_on_settings = erasure_data(family, 4 * batch_size)
    method = SFROnConfig(mask_batches=1, **sfr_on_settings) if method_name == "sfr_on" else FTConfig()
    training = TrainingArguments(max_train_steps=args.warmup + args.iterations, forget_batch_size=batch_size,
                                 remain_batch_size=batch_size, optimizer="adamw", mixed_precision=args.mixed_precision,
                                 gradient_checkpointing=args.gradient_checkpointing, lora_rank=lora_rank,
                                 cudnn_attention=not args.no_cudnn_attention)  # fmt: skip
    ends: dict[int, float] = {}  # iteration → when its last optimizer step ended

    def on_phase_end(event) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        ends[event.step] = time.perf_counter()

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = erase(pipeline, concept, method=method, data=dataset, training=training, evaluate=False,
                   callbacks=(on_phase_end,), accelerator=accelerator)  # fmt: skip
    times = [ends[step] for step in sorted(ends)]
    per_iteration = [b - a for a, b in zip(times[args.warmup - 1 : -1], times[args.warmup :], strict=True)]
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {
        "seconds_per_iteration": statistics.median(per_iteration),
        "peak_memory_gib": peak,
        "mask_seconds": result.seconds["mask"],
        "parameters": sum(p.numel() for p in family.denoiser.parameters()),
        "method_config": result.config["method_config"],
        "erased": result.config["erased"],
    }


def extrapolate(points: dict[int, float], depth: int) -> float:
    """The least-squares line through (depth, value) `points`, at `depth`."""
    xs, ys = list(points), list(points.values())
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum((x - mean_x) ** 2 for x in xs)
    return mean_y + slope * (depth - mean_x)


def extrapolated(runs: dict[int, dict], depth: int) -> dict:
    """A run at `depth` from the runs at other depths: each quantity in :data:`LINEAR` on its line; the rest (the
    method's settings) from the deepest run."""
    deepest = runs[max(runs)]
    result = dict(deepest)
    for key in LINEAR:
        if deepest[key] is not None:
            result[key] = extrapolate({k: run[key] for k, run in runs.items()}, depth)
    result["parameters"] = round(result["parameters"])  # exact: parameters are linear in the blocks
    return result


def measure_family(family_name: str, args, variant: str = "full") -> dict:
    """SFR-on and FT on `family_name`'s layout, training its weights or (`variant` "lora") LoRA adapters; for Flux,
    at each of ``--flux_depths`` and extrapolated (or, given FLUX.1-dev's depth alone, at that depth)."""
    batch_size = args.batch_sizes[family_name]
    model = f"tiny {family_name}" if args.tiny else MODEL_NAMES[family_name]
    lora_rank = args.lora_rank if variant == "lora" else None
    if lora_rank is not None:
        model = f"{model}, LoRA rank {lora_rank}"
    report = {"family": family_name, "model": model, "batch_size": batch_size, "variant": variant}
    if lora_rank is not None:
        report["lora_rank"] = lora_rank
    if family_name != "flux" or args.flux_depths == [FLUX_DEPTH]:
        overrides = flux_overrides(FLUX_DEPTH) if family_name == "flux" else None
        sfr = time_method("sfr_on", family_name, args, batch_size, overrides, lora_rank=lora_rank)
        ft = time_method("ft", family_name, args, batch_size, overrides, lora_rank=lora_rank)
    else:
        measured = []
        for depth in args.flux_depths:
            overrides = flux_overrides(depth)
            sfr_k = time_method("sfr_on", family_name, args, batch_size, overrides, lora_rank=lora_rank)
            ft_k = time_method("ft", family_name, args, batch_size, overrides, lora_rank=lora_rank)
            measured.append({"double_blocks": depth, "single_blocks": 2 * depth, "sfr_on": sfr_k, "ft": ft_k,
                             "ratio_sfr_on_to_ft": ratio(sfr_k, ft_k)})  # fmt: skip
        sfr = extrapolated({m["double_blocks"]: m["sfr_on"] for m in measured}, FLUX_DEPTH)
        ft = extrapolated({m["double_blocks"]: m["ft"] for m in measured}, FLUX_DEPTH)
        report |= {"extrapolated_to_blocks": [FLUX_DEPTH, 2 * FLUX_DEPTH], "measured": measured}
    report |= {"sfr_on": sfr, "ft": ft, "ratio_sfr_on_to_ft": ratio(sfr, ft)}
    capacity = card_memory_gib()
    if capacity is not None:  # the extrapolated Flux may need more than the card has
        report["fits_one_card"] = {
            "sfr_on": sfr["peak_memory_gib"] <= capacity,
            "ft": ft["peak_memory_gib"] <= capacity,
        }
    return report


def ratio(sfr: dict, ft: dict) -> float:
    """Seconds per SFR-on iteration over seconds per FT pass."""
    return sfr["seconds_per_iteration"] / ft["seconds_per_iteration"]


def card_memory_gib() -> float | None:
    """The GPU's memory (None without one)."""
    return torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else None


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", nargs="+", choices=FAMILIES, default=["dit"], help="One or more families.")
    parser.add_argument("--all", action="store_true", help=f"Every family, in this order: {' '.join(FAMILIES)}.")
    parser.add_argument(
        "--batch_size",
        type=int,
        default=None,
        help=f"Forget and remain batch (default per family: {DEFAULT_BATCH_SIZE}).",
    )
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--mixed_precision", default="bf16", choices=["no", "fp16", "bf16"])
    parser.add_argument("--gradient_checkpointing", action="store_true", help="Trade compute for memory.")
    parser.add_argument(
        "--no_cudnn_attention",
        action="store_true",
        help="Erase with TrainingArguments(cudnn_attention=False): attention without cuDNN's backend.",
    )
    parser.add_argument(
        "--flux_depths",
        type=int,
        nargs="+",
        default=list(DEFAULT_FLUX_DEPTHS),
        help=f"Flux: measure with K double-stream + 2K single-stream blocks for each K (at least two different K), "
        f"extrapolated to FLUX.1-dev's {FLUX_DEPTH} + {2 * FLUX_DEPTH}; or {FLUX_DEPTH} alone, the whole transformer "
        "(under FSDP on several cards, for full weights).",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        default=["full"],
        help="What trains: full (the weights) and/or lora (LoRA adapters of rank --lora_rank); each one a row.",
    )
    parser.add_argument("--lora_rank", type=int, default=DEFAULT_LORA_RANK, help="The rank of the lora variant.")
    parser.add_argument("--tiny", action="store_true", help="Tiny configs on the CPU: checks the script runs.")
    parser.add_argument("--write", action="store_true", help="Write the result into --output.")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md", help="Where --write writes.")
    args = parser.parse_args(argv)
    if args.all:
        args.family = list(FAMILIES)
    if len(set(args.family)) != len(args.family):
        parser.error(f"--family names a family twice: {args.family}.")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch_size must be >= 1, got {args.batch_size}.")
    args.batch_sizes = {name: args.batch_size or DEFAULT_BATCH_SIZE[name] for name in args.family}
    if args.iterations < 1:
        parser.error(f"--iterations must be >= 1, got {args.iterations}.")
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (the first iteration includes one-off setup).")
    if args.flux_depths != [FLUX_DEPTH] and (len(set(args.flux_depths)) < 2 or min(args.flux_depths) < 1):
        parser.error(
            f"--flux_depths needs at least two different depths >= 1 to extrapolate (or {FLUX_DEPTH} alone), got "
            f"{args.flux_depths}."
        )
    if len(set(args.variants)) != len(args.variants):
        parser.error(f"--variants names a variant twice: {args.variants}.")
    if args.lora_rank < 1:
        parser.error(f"--lora_rank must be >= 1, got {args.lora_rank}.")
    if not args.tiny and not torch.cuda.is_available():
        parser.error("Real-size runs need a CUDA GPU; use --tiny for a CPU smoke run.")
    return args


def _gib(value: float | None) -> str:
    if value is None:
        return "n/a"
    capacity = card_memory_gib()
    more = f" (more than the card's {capacity:.0f} GiB)" if capacity is not None and value > capacity else ""
    return f"{value:.1f} GiB{more}"


def forget_step(run: dict) -> str:
    """What the SFR-on forget step did, in words (the family's adversarial steps included)."""
    forget_loss = run["method_config"]["forget_loss"]
    steps = run["method_config"].get("adversarial_steps") or 0
    robust = f", {steps} adversarial steps" if steps else ""
    anchor = run["erased"].get("anchor_concept")  # set where the concept was remapped onto a prompt or a class
    if anchor is None:
        return forget_loss + robust
    if "forget_prompts" in run["erased"]:
        onto = f'"{anchor}"' if anchor else "the empty prompt"
        return f'{forget_loss} of the captions naming "{CONCEPT}" onto {onto}{robust}'
    return f'{forget_loss} of class {run["erased"]["class_id"]} onto "{anchor}"{robust}'


def _millions(count: int) -> str:
    return f"{count / 1e6:,.0f}M" if count >= 1e7 else f"{count / 1e6:.2g}M"  # 860M, 6.7M, 0.79M


def table_row(model: str, batch_size: int, sfr: dict, ft: dict) -> str:
    return (
        f"| {model} | {_millions(sfr['parameters'])} | {batch_size} | {sfr['seconds_per_iteration']:.3f} | "
        f"{ft['seconds_per_iteration']:.3f} | {ratio(sfr, ft):.2f} | {_gib(sfr['peak_memory_gib'])} | "
        f"{_gib(ft['peak_memory_gib'])} | {sfr['mask_seconds']:.1f} | {forget_step(sfr)} |"
    )


def section(reports: list[dict], args, command: str, device: str, date: str) -> str:
    """One BENCHMARKS.md section for every family measured."""
    families = list(dict.fromkeys(r["family"] for r in reports))
    name = "all" if families == list(FAMILIES) else "-".join(families)
    title = ", ".join(families)
    if args.variants != ["full"]:  # a section of its own, so that it never replaces the full-weight one
        name += "-" + "-".join(args.variants)
        title += f" ({' and '.join('LoRA' if v == 'lora' else 'full weights' for v in args.variants)})"
    lines = [
        f"<!-- gpu-cost-{name}:start -->",
        f"## Cost at real size: {title}, {device}",
        "",
        f"- Command: `{command.strip()}`; date {date}; torch {torch.__version__}, diffusers {diffusers.__version__}; "
        f"random weights in the checkpoints' layouts, mixed precision {args.mixed_precision}, AdamW, gradient "
        f"checkpointing {'on' if args.gradient_checkpointing else 'off'}"
        f"{', cuDNN attention off' if args.no_cudnn_attention else ''}; batch B: an SFR-on iteration is a forget "
        "step on B images and a remain step on B, an FT pass one step on B; median of "
        f"{args.iterations} iterations after {args.warmup}.",
    ]
    rows = []
    for report in reports:
        if "out_of_memory" in report:
            oom = f"out of memory at batch {report['batch_size']}"
            rows.append(f"| {report['model']} | | {report['batch_size']} | {oom} | | | | | | |")
            continue
        sfr, ft, batch = report["sfr_on"], report["ft"], report["batch_size"]
        if "measured" not in report:
            rows.append(table_row(report["model"], batch, sfr, ft))
            continue
        double, single = report["extrapolated_to_blocks"]
        for run in report["measured"]:
            model = f"{report['model']}, {run['double_blocks']} + {run['single_blocks']} blocks"
            rows.append(table_row(model, batch, run["sfr_on"], run["ft"]))
        rows.append(table_row(f"{report['model']}, {double} + {single} blocks, extrapolated", batch, sfr, ft))
        depths = " and ".join(f"{m['double_blocks']} + {m['single_blocks']}" for m in report["measured"])
        lines.append(
            f"- {report['model']}: measured with {depths} double-stream + single-stream blocks and extrapolated "
            f"linearly per block to FLUX.1-dev's {double} + {single} (a row of its own)."
        )
        if not all(report.get("fits_one_card", {}).values()):  # known on a GPU only
            lines[-1] = lines[-1][:-1] + (
                "; the whole transformer trained with AdamW needs more memory than one card has: shard it over "
                "several (FSDP, configs/accelerate_fsdp.yaml)."
            )
    lines += [
        "",
        "| model | parameters | batch | s / SFR-on iteration | s / FT pass | ratio | peak memory (SFR-on) | "
        "peak memory (FT) | mask (s) | SFR-on forget step |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        f"<!-- gpu-cost-{name}:end -->",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    """Measure; the report of the one family asked for, or ``{"device", "date", "families": {name: report}}``."""
    args = parse_args(argv)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    date = datetime.date.today().isoformat()
    reports = []
    for family_name in args.family:
        for variant in args.variants:
            try:
                report = measure_family(family_name, args, variant)
            except torch.cuda.OutOfMemoryError as error:
                # One family too large for the card must not cost the others' measurements (a GPU run is
                # expensive): it is reported as such, and the next starts from a freed card (time_method collects).
                model = f"tiny {family_name}" if args.tiny else MODEL_NAMES[family_name]
                report = {"family": family_name, "batch_size": args.batch_sizes[family_name], "variant": variant,
                          "model": model if variant == "full" else f"{model}, LoRA rank {args.lora_rank}",
                          "out_of_memory": str(error).splitlines()[0] if str(error) else "out of memory"}  # fmt: skip
            report |= {"device": device, "mixed_precision": args.mixed_precision, "iterations": args.iterations,
                       "date": date}  # fmt: skip
            if PartialState().is_main_process:
                print(json.dumps(report, indent=2), flush=True)  # each as soon as it is measured
            reports.append(report)
    if args.write and PartialState().is_main_process:
        command = "python benchmarks/benchmark_gpu.py " + " ".join(sys.argv[1:] if argv is None else argv)
        write_section(args.output, section(reports, args, command, device, date))
    if len(reports) == 1:
        return reports[0]
    # Keyed by family, and by family-lora for the LoRA rows.
    keys = [r["family"] if r["variant"] == "full" else f"{r['family']}-lora" for r in reports]
    return {"device": device, "date": date, "families": dict(zip(keys, reports, strict=True))}


if __name__ == "__main__":
    main()
