"""Cost of SFR-on at real size: seconds per iteration, its ratio to one plain fine-tuning pass, peak GPU memory.

    python benchmarks/benchmark_gpu.py --family dit --write       # DiT-XL/2 at 256 px, batch 32, bf16
    python benchmarks/benchmark_gpu.py --family sd --write        # SD v1.4 UNet at 512 px, batch 8, bf16
    python benchmarks/benchmark_gpu.py --family sd --tiny         # the same code on tiny configs (CPU smoke run)

Random weights in the layouts of the real checkpoints (``sfr_diffusion.testing.layouts``; no hub access is needed):
the point is the cost of the method, not its effect. SFR-on runs ``--iterations`` iterations (forget step + remain
step, batch ``--batch_size`` each) after ``--warmup`` ones; FT runs the same number of single remain passes at the
same batch. Both go through ``sfr_diffusion.erase()`` (without evaluation), so the ratio includes everything an
iteration does (masking, clipping, both optimizer steps). Each family is erased the way it is configured for real:
DiT forgets class 0 by weighted ascent; SD forgets the captions that name "cat" by remapping them onto the empty
prompt (the anchor), half of the random images being captioned "a photo of a cat" and half "a photo of a dog".
``--write`` puts the result into BENCHMARKS.md together with the card's name.
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

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from datasets import Dataset
from reporting import write_section

from sfr_diffusion import FTConfig, SFROnConfig, TrainingArguments, erase
from sfr_diffusion.families import family_for
from sfr_diffusion.testing.data import random_captioned_images, random_images
from sfr_diffusion.testing.layouts import dit_pipeline, stable_diffusion_pipeline

ROOT = Path(__file__).resolve().parent.parent
BUILDERS = {"dit": dit_pipeline, "sd": stable_diffusion_pipeline}
REAL_SIZE = {"dit": "dit-xl-2-256", "sd": "sd-1.4"}
MODEL_NAMES = {"dit": "DiT-XL/2, 256 px", "sd": "SD v1.4 UNet, 512 px"}
DEFAULT_BATCH_SIZE = {"dit": 32, "sd": 8}
CONCEPT, CAPTIONS = "cat", ("a photo of a cat", "a photo of a dog")  # SD: the concept erased, the two captions


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


def time_method(method_name: str, args) -> dict:
    # The previous method's models (SD: two UNets and the optimizer state) must be gone before this one is measured.
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    AcceleratorState._reset_state(True)
    accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=args.tiny)
    pipeline = BUILDERS[args.family]("tiny" if args.tiny else REAL_SIZE[args.family], seed=0)
    family = family_for(pipeline)
    dataset, concept, sfr_on_settings = erasure_data(family, 4 * args.batch_size)
    method = SFROnConfig(mask_batches=1, **sfr_on_settings) if method_name == "sfr_on" else FTConfig()
    training = TrainingArguments(max_train_steps=args.warmup + args.iterations, forget_batch_size=args.batch_size,
                                 remain_batch_size=args.batch_size, optimizer="adamw",
                                 mixed_precision=args.mixed_precision)  # fmt: skip
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


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=sorted(BUILDERS), default="dit")
    parser.add_argument("--batch_size", type=int, default=None, help=f"Default per family: {DEFAULT_BATCH_SIZE}.")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--mixed_precision", default="bf16", choices=["no", "fp16", "bf16"])
    parser.add_argument("--tiny", action="store_true", help="Tiny configs on the CPU: checks the script runs.")
    parser.add_argument("--write", action="store_true", help="Write the result into --output.")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md", help="Where --write writes.")
    known, _ = parser.parse_known_args(argv)
    parser.set_defaults(batch_size=DEFAULT_BATCH_SIZE[known.family])
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch_size must be >= 1, got {args.batch_size}.")
    if args.iterations < 1:
        parser.error(f"--iterations must be >= 1, got {args.iterations}.")
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (the first iteration includes one-off setup).")
    if not args.tiny and not torch.cuda.is_available():
        parser.error("Real-size runs need a CUDA GPU; use --tiny for a CPU smoke run.")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    sfr = time_method("sfr_on", args)
    ft = time_method("ft", args)
    report = {
        "family": args.family,
        "model": f"tiny {args.family}" if args.tiny else MODEL_NAMES[args.family],
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU",
        "batch_size": args.batch_size,
        "mixed_precision": args.mixed_precision,
        "iterations": args.iterations,
        "sfr_on": sfr,
        "ft": ft,
        "ratio_sfr_on_to_ft": sfr["seconds_per_iteration"] / ft["seconds_per_iteration"],
        "date": datetime.date.today().isoformat(),
    }
    print(json.dumps(report, indent=2))
    if args.write:
        command = "python benchmarks/benchmark_gpu.py " + " ".join(sys.argv[1:] if argv is None else argv)
        peak = f"{sfr['peak_memory_gib']:.1f} GiB" if sfr["peak_memory_gib"] is not None else "n/a"
        forget_loss = sfr["method_config"]["forget_loss"]
        anchor = sfr["erased"].get("anchor_concept")  # set where a text concept was remapped onto a prompt
        if anchor is not None:
            onto = f'"{anchor}"' if anchor else "the empty prompt"
            forget_loss += f' of the captions naming "{CONCEPT}" onto {onto}'
        section = "\n".join([
            f"<!-- gpu-cost-{args.family}:start -->",
            f"## Cost at real size: {args.family}, {report['device']}",
            "",
            f"- Command: `{command.strip()}`; date {report['date']}; random weights, {args.mixed_precision}, "
            f"batch {args.batch_size} (SFR-on: {args.batch_size} forget + {args.batch_size} remain); "
            f"SFR-on forget loss: {forget_loss}.",
            "",
            "| model | parameters | s / SFR-on iteration | s / FT pass | ratio | peak memory (SFR-on) | mask (s) |",
            "|---|---|---|---|---|---|---|",
            f"| {report['model']} | {sfr['parameters'] / 1e6:.0f}M | {sfr['seconds_per_iteration']:.3f} | "
            f"{ft['seconds_per_iteration']:.3f} | {report['ratio_sfr_on_to_ft']:.2f} | {peak} | "
            f"{sfr['mask_seconds']:.1f} |",
            f"<!-- gpu-cost-{args.family}:end -->",
        ]) + "\n"  # fmt: skip
        write_section(args.output, section)
    return report


if __name__ == "__main__":
    main()
