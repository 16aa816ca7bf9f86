"""Cost of SFR-on at real size: seconds per iteration, its ratio to one plain fine-tuning pass, peak GPU memory.

    python scripts/benchmark_gpu.py --family dit --write          # DiT-XL/2 at 256 px, batch 32, bf16
    python scripts/benchmark_gpu.py --family dit --tiny           # the same code on tiny configs (CPU smoke run)

Random weights (no hub access is needed): the point is the cost of the method, not its effect. SFR-on runs
``--iterations`` iterations (forget step + remain step, batch ``--batch_size`` each) after ``--warmup`` ones; FT runs
the same number of single remain passes at the same batch. Both go through the package's trainer, so the ratio
includes everything an iteration does (masking, clipping, both optimizer steps). ``--write`` puts the result into
BENCHMARKS.md together with the card's name.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from datasets import ClassLabel, Dataset, Features, Image
from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

from sfr_diffusion.data import split_by_class
from sfr_diffusion.families import family_for
from sfr_diffusion.methods import FT, FTConfig, SFROn, SFROnConfig
from sfr_diffusion.training import TrainingArguments, run_erasure

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))


def dit_pipeline(tiny: bool) -> tuple[DiTPipeline, int]:
    """DiT-XL/2 256 (675M, learned sigma) behind an SD-style VAE; or tiny stand-ins of the same layout."""
    if tiny:
        transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                            out_channels=8, num_layers=2, sample_size=4, patch_size=2)  # fmt: skip
        vae = AutoencoderKL(
            block_out_channels=(8, 16),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            norm_num_groups=4,
            latent_channels=4,
        )
        resolution = 8
    else:
        transformer = DiTTransformer2DModel(in_channels=4, out_channels=8, sample_size=32)  # the XL/2 defaults
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            scaling_factor=0.18215,
        )
        resolution = 256
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    labels = {i: f"class {i}" for i in range(transformer.config.num_embeds_ada_norm)}
    return DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler, id2label=labels), resolution


BUILDERS = {"dit": dit_pipeline}


def random_images(count: int, resolution: int, classes: int = 2) -> Dataset:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8) for _ in range(count)]
    features = Features({"image": Image(), "label": ClassLabel(num_classes=classes)})
    return Dataset.from_dict({"image": images, "label": [i % classes for i in range(count)]}, features=features)


def time_method(method_name: str, args, output_dir: str) -> dict:
    AcceleratorState._reset_state(True)
    accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=args.tiny)
    pipeline, resolution = BUILDERS[args.family](args.tiny)
    pipeline.to(accelerator.device)
    family = family_for(pipeline)
    channels = family.image_shape[0]
    forget, remain = split_by_class(random_images(4 * args.batch_size, resolution), [0], resolution=resolution,
                                    channels=channels)  # fmt: skip
    if method_name == "sfr_on":
        method = SFROn(SFROnConfig(mask_batches=1), family)
    else:
        method = FT(FTConfig(), family)
    total = args.warmup + args.iterations
    training_args = TrainingArguments(output_dir=output_dir, max_train_steps=total, forget_batch_size=args.batch_size,
                                      remain_batch_size=args.batch_size, optimizer="adamw")  # fmt: skip
    ends: list[float] = []
    last_phase = method.phases[-1].name

    def on_phase_end(event) -> None:
        if event.phase.name == last_phase:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            ends.append(time.perf_counter())

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = run_erasure(accelerator=accelerator, method=method, forget=forget, remain=remain, args=training_args,
                         callbacks=(on_phase_end,))  # fmt: skip
    per_iteration = [b - a for a, b in zip(ends[args.warmup - 1 : -1], ends[args.warmup :], strict=True)]
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {
        "seconds_per_iteration": statistics.median(per_iteration),
        "peak_memory_gib": peak,
        "mask_seconds": result.mask_seconds,
        "parameters": sum(p.numel() for p in family.denoiser.parameters()),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=sorted(BUILDERS), default="dit")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--mixed_precision", default="bf16", choices=["no", "fp16", "bf16"])
    parser.add_argument("--tiny", action="store_true", help="Tiny configs on the CPU: checks the script runs.")
    parser.add_argument("--write", action="store_true", help="Write the result into BENCHMARKS.md.")
    args = parser.parse_args(argv)
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (the first iteration includes one-off setup).")
    if not args.tiny and not torch.cuda.is_available():
        parser.error("Real-size runs need a CUDA GPU; use --tiny for a CPU smoke run.")

    with tempfile.TemporaryDirectory() as tmp:
        sfr = time_method("sfr_on", args, f"{tmp}/sfr_on")
        ft = time_method("ft", args, f"{tmp}/ft")
    report = {
        "family": args.family,
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
        from benchmark import write_section

        command = "python scripts/benchmark_gpu.py " + " ".join(sys.argv[1:] if argv is None else argv)
        peak = f"{sfr['peak_memory_gib']:.1f} GiB" if sfr["peak_memory_gib"] is not None else "n/a"
        section = "\n".join([
            f"<!-- gpu-cost-{args.family}:start -->",
            f"## Cost at real size: {args.family}, {report['device']}",
            "",
            f"- Command: `{command.strip()}`; date {report['date']}; random weights, {args.mixed_precision}, "
            f"batch {args.batch_size} (SFR-on: {args.batch_size} forget + {args.batch_size} remain).",
            "",
            "| model | parameters | s / SFR-on iteration | s / FT pass | ratio | peak memory (SFR-on) | mask (s) |",
            "|---|---|---|---|---|---|---|",
            f"| {args.family} | {sfr['parameters'] / 1e6:.0f}M | {sfr['seconds_per_iteration']:.3f} | "
            f"{ft['seconds_per_iteration']:.3f} | {report['ratio_sfr_on_to_ft']:.2f} | {peak} | "
            f"{sfr['mask_seconds']:.1f} |",
            f"<!-- gpu-cost-{args.family}:end -->",
        ]) + "\n"  # fmt: skip
        write_section(ROOT / "BENCHMARKS.md", section)
    return report


if __name__ == "__main__":
    main()
