"""Peak memory of SFR-on (remap forget loss) on the Stable Diffusion 1.4 layout: fp32 against bf16 mixed precision.

    python benchmarks/memory_mixed_precision.py                    # measure; write the section into BENCHMARKS.md
    python benchmarks/memory_mixed_precision.py --no_write         # measure and print only
    python benchmarks/memory_mixed_precision.py --size tiny --no_write --resolution 16   # smoke run of the code

Under ``mixed_precision`` bf16/fp16, ``sfr_diffusion.erase()`` keeps the frozen parts (VAE, text encoder) and the
frozen copy θ₀ of the denoiser that the remap forget loss targets (with ``original="copy"``) in the weight dtype,
while the trained UNet stays fp32 (``DiffusionFamily.prepared_for_training``,
``sfr_diffusion.original.make_original``). This script measures what that does to the peak memory on the real
layout: ``stable_diffusion_pipeline("sd-1.4")`` (random weights in the CompVis/stable-diffusion-v1-4 layout: UNet
860M, CLIP ViT-L/14 text encoder, the SD VAE; no hub access), at a small resolution so that it runs on a CPU (the
UNet's ``sample_size`` is lowered; no weight changes shape).

Each setting runs in a fresh process whose peak resident memory (``ru_maxrss``, the whole process: Python, torch, the
pipeline, the data and the erasure) is read after ``erase()`` returns: a *load only* process (pipeline and data
built, no erasure), then SFR-on with ``mixed_precision="no"`` and ``"bf16"`` (bf16 autocast runs on CPUs). Inside
each run a callback records, at the first optimizer step, the dtype of the VAE, the text encoder, the trained
UNet's weights and the method's frozen copy (the one ``UNet2DConditionModel`` that ``erase()`` created), and after
``erase()`` returns whether every component has its dtype and ``requires_grad`` flags back. The three processes
import one copy of ``sfr_diffusion/`` taken when the script starts, so they measure the same code.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from memory import RssSampler, gib, peak_rss_bytes, rss_bytes, snapshot_library
from reporting import git_commit, machine_description, write_section

import sfr_diffusion
from sfr_diffusion import SFROnConfig, TrainingArguments, erase
from sfr_diffusion.testing.data import random_captioned_images
from sfr_diffusion.testing.layouts import SD_SIZES, stable_diffusion_pipeline

ROOT = Path(__file__).resolve().parent.parent
SECTION = "memory-mixed-precision"
CONCEPT, CAPTIONS = "cat", ("a photo of a cat", "a photo of a dog")  # the concept erased; captions of the images
MODES = ("load", "no", "bf16")  # a fresh process each: load only, then SFR-on in fp32 and under bf16 autocast
RESULT_PREFIX = "MEMORY_RESULT "
# Bytes per UNet parameter that trainable="all" needs at least, besides activations, the mask and the rest:
# fp32 weights 4 + gradients 4 + Adam's two moments 8 + the frozen copy (fp32 4 or bf16 2).
BYTES_PER_PARAMETER_ALL = {"no": 20, "bf16": 18}


def dtype_name(module: torch.nn.Module, trainable_only: bool = False) -> str:
    """The dtype(s) of a module's parameters (or of its trainable ones), e.g. "bfloat16" or "float32/bfloat16"."""
    dtypes = {
        str(p.dtype).removeprefix("torch.") for p in module.parameters() if p.requires_grad or not trainable_only
    }
    return "/".join(sorted(dtypes)) or "none"


def module_state(module: torch.nn.Module) -> dict:
    return {
        "dtype": dtype_name(module),
        "training": module.training,
        "requires_grad": [p.requires_grad for p in module.parameters()],
    }


def unets_alive() -> list[torch.nn.Module]:
    gc.collect()
    return [obj for obj in gc.get_objects() if type(obj) is UNet2DConditionModel]  # exact: no proxy objects' hooks


def training_state_bytes(modules: list[torch.nn.Module], optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the tensors training works with: every weight and buffer of `modules` (the pipeline's components as
    they are during training, and the frozen copy) and the optimizer's state, each storage counted once. This is
    what a GPU would hold besides activations: originals that mixed precision parks on the CPU are not in it."""
    storages = {}
    tensors = [t for module in modules for t in [*module.parameters(), *module.buffers()]]
    tensors += [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    for tensor in tensors:
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
    return sum(storages.values())


def child(settings: dict) -> dict:
    """One measured run (in its own process): build the pipeline and data; unless "load", erase with SFR-on."""
    start = time.perf_counter()
    pipeline = stable_diffusion_pipeline(settings["size"], seed=0)
    pipeline.set_progress_bar_config(disable=True)
    # The layout's weights at a lower resolution: the UNet's sample_size decides the training images' size (and no
    # weight's shape); the VAE's sample_size is only the tiling default, kept in step.
    pipeline.unet.register_to_config(sample_size=settings["resolution"] // 8)
    pipeline.vae.register_to_config(sample_size=settings["resolution"])
    dataset = random_captioned_images(4, settings["resolution"], CAPTIONS)
    report = {"mode": settings["mode"], "build_seconds": round(time.perf_counter() - start, 1)}
    report["parameters"] = {
        name: sum(p.numel() for p in getattr(pipeline, name).parameters()) for name in ("unet", "vae", "text_encoder")
    }
    if settings["mode"] == "load":
        report["peak_rss_bytes"] = peak_rss_bytes()
        return report

    components = {"unet": pipeline.unet, "vae": pipeline.vae, "text_encoder": pipeline.text_encoder}
    before = {name: module_state(module) for name, module in components.items()}
    existing = unets_alive()  # strong references: the frozen copy is the one UNet erase() adds to these
    seen: dict = {}
    marks: dict = {}

    def record_dtypes(event) -> None:
        if seen:
            return
        marks["first_step_end"] = time.perf_counter()
        copies = [m for m in unets_alive() if not any(m is old for old in existing)]
        seen.update(
            training_state_bytes=training_state_bytes([*components.values(), *copies], event.optimizer),
            vae=dtype_name(pipeline.vae),
            vae_frozen=not any(p.requires_grad for p in pipeline.vae.parameters()),
            text_encoder=dtype_name(pipeline.text_encoder),
            text_encoder_frozen=not any(p.requires_grad for p in pipeline.text_encoder.parameters()),
            unet_trained=dtype_name(event.model, trainable_only=True),
            unet_frozen="/".join(
                sorted({str(p.dtype).removeprefix("torch.") for p in event.model.parameters() if not p.requires_grad})
            )
            or "none",  # fmt: skip
            unet_trained_parameters=sum(p.numel() for p in event.model.parameters() if p.requires_grad),
            frozen_copy=dtype_name(copies[0]) if len(copies) == 1 else f"{len(copies)} new UNets found",
        )

    training = TrainingArguments(
        max_train_steps=settings["iterations"],
        forget_batch_size=1,
        remain_batch_size=1,
        mixed_precision=settings["mode"],
        trainable=settings["trainable"],
        original="copy",  # the frozen copy's dtype is what this script measures
    )
    method = SFROnConfig(forget_loss="remap", mask_batches=1)
    sampler = RssSampler()
    sampler.start()
    erase_start = time.perf_counter()
    result = erase(pipeline, CONCEPT, method=method, data=dataset, training=training, evaluate=False,
                   callbacks=(record_dtypes,))  # fmt: skip
    erase_end = time.perf_counter()
    sampler.stopped.set()
    sampler.join()
    report["peak_rss_bytes"] = peak_rss_bytes()
    report["erase_seconds"] = round(erase_end - erase_start, 1)
    # Sampled, so a spike shorter than the interval can be missed: each is at most the ru_maxrss above.
    report["sampled_peak_bytes"] = {
        "until_first_step_end": sampler.peak(erase_start, marks["first_step_end"]),
        "after_first_step": sampler.peak(marks["first_step_end"], erase_end),
    }
    report["rss_after_erase_bytes"] = rss_bytes()
    report["seconds"] = result.seconds
    report["during_training"] = seen
    report["restored"] = {name: module_state(module) == before[name] for name, module in components.items()}
    report["anchor"] = result.config["erased"].get("anchor_concept")
    return report


def run_child(settings: dict, library: Path) -> dict:
    """Run one setting in a fresh Python process that imports ``sfr_diffusion`` from `library`; return its report
    (its progress goes to our stderr)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(settings)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(library), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"The {settings['mode']!r} run failed (exit {done.returncode}):\n{done.stdout[-2000:]}")
    report = json.loads(lines[-1][len(RESULT_PREFIX) :])
    if Path(report["library"]) != library / "sfr_diffusion":
        raise RuntimeError(
            f"The {settings['mode']!r} run imported sfr_diffusion from {report['library']}, not {library}."
        )
    return report


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SD_SIZES, default="sd-1.4", help="The layout (tiny: a smoke run).")
    parser.add_argument("--resolution", type=int, default=64, help="Image side in pixels (a multiple of 8).")
    parser.add_argument(
        "--iterations",
        type=int,
        default=1,
        help="SFR-on iterations (a forget step and a remain step; Adam's state exists from the first step on).",
    )
    parser.add_argument(
        "--trainable",
        choices=("cross_attention", "all"),
        default="cross_attention",
        help="Which UNet weights train (cross_attention: the README's setting for SD-1.4 on small GPUs).",
    )
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md", help="Where the section is written.")
    parser.add_argument("--no_write", action="store_true", help="Print the results only.")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: the settings of one measured run (JSON)
    args = parser.parse_args(argv)
    if args.resolution < 8 or args.resolution % 8:
        parser.error(f"--resolution must be a positive multiple of 8 (the VAE's factor), got {args.resolution}.")
    if args.iterations < 1:
        parser.error(f"--iterations must be >= 1, got {args.iterations}.")
    return args


def render(args, command: str, reports: dict, wall_seconds: float, sources: str) -> str:
    fp32, bf16, load = reports["no"], reports["bf16"], reports["load"]
    counts = fp32["parameters"]
    parameters = counts["unet"]
    trained = fp32["during_training"]["unet_trained_parameters"]
    layout = (
        'the CompVis/stable-diffusion-v1-4 layout with random weights (`stable_diffusion_pipeline("sd-1.4")`: '
        f"UNet {parameters / 1e6:.0f}M, CLIP ViT-L/14 text encoder, SD VAE)"
        if args.size == "sd-1.4"
        else f'the tiny SD layout (`stable_diffusion_pipeline("tiny")`, UNet {parameters / 1e6:.2f}M)'
    )
    iterations = f"{args.iterations} iteration" + ("s" if args.iterations > 1 else "")
    setting = f"SFR-on, remap, `trainable={args.trainable}`, {iterations}"

    def row(label: str, a: int, b: int) -> str:
        return f"| {label} | {gib(a):.2f} GiB | {gib(b):.2f} GiB | {gib(b - a):+.2f} GiB (× {b / a:.2f}) |"

    sampled = {key: (fp32["sampled_peak_bytes"][key], bf16["sampled_peak_bytes"][key])
               for key in fp32["sampled_peak_bytes"]}  # fmt: skip
    rows = [
        "| setting | peak RSS fp32 (`no`) | peak RSS bf16 | change (bf16 − fp32) |",
        "|---|---|---|---|",
        row(f"{setting}: whole process (`ru_maxrss`)", fp32["peak_rss_bytes"], bf16["peak_rss_bytes"]),
        row(
            "of which, sampled: from `erase()`'s start to the end of the first optimizer step (θ₀ copy, saliency "
            "mask, forget step)",
            *sampled["until_first_step_end"],
        ),
        row(
            "of which, sampled: after the first optimizer step (the remaining steps, dtypes restored)",
            *sampled["after_first_step"],
        ),
        row(
            "training state at the first step: the weights and buffers of the UNet, VAE, text encoder and frozen "
            "copy as they are during training, and Adam's moments (what an accelerator holds besides activations)",
            fp32["during_training"]["training_state_bytes"],
            bf16["during_training"]["training_state_bytes"],
        ),
    ]
    dtypes = [
        "| during training | VAE | text encoder | UNet weights that train | the others | frozen copy θ₀ "
        "| restored after `erase()` |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, report in (("fp32 (`no`)", fp32), ("bf16", bf16)):
        seen = report["during_training"]
        frozen = {True: "frozen", False: "NOT frozen"}
        restored = "yes" if all(report["restored"].values()) else f"no: {report['restored']}"
        dtypes.append(
            f"| {label} | {seen['vae']}, {frozen[seen['vae_frozen']]} | {seen['text_encoder']}, "
            f"{frozen[seen['text_encoder_frozen']]} | {seen['unet_trained']} | {seen['unet_frozen']} | "
            f"{seen['frozen_copy']} | {restored} |"
        )
    estimate = {mode: gib(n * parameters) for mode, n in BYTES_PER_PARAMETER_ALL.items()}
    all_note = (
        "`trainable=all` was not measured: Adam on every UNet weight needs at least "
        f"{BYTES_PER_PARAMETER_ALL['no']} bytes per parameter in fp32 (weights, gradients, two moments, the frozen "
        f"copy) and {BYTES_PER_PARAMETER_ALL['bf16']} under bf16, i.e. ≥ {estimate['no']:.1f} / "
        f"{estimate['bf16']:.1f} GiB before the VAE, text encoder, activations and saliency mask, which does not fit "
        "with margin in this machine's 23 GiB shared with other jobs."
        if args.trainable != "all"
        else "`trainable=all`: every UNet weight trained."
    )
    return "\n".join([
        f"<!-- {SECTION}:start -->",
        "## Peak memory of mixed precision: SFR-on (remap) on the SD-1.4 layout",
        "",
        f"- Command: `{command}` ({wall_seconds / 60:.1f} minutes); date {datetime.date.today().isoformat()}; commit "
        f"{git_commit(ROOT)}, every run importing one copy of `sfr_diffusion/` taken at the start (sha256 of its "
        f"sources {sources}…); "
        f"machine: {machine_description()}.",
        f"- Model: {layout}, at {args.resolution} px (the UNet's `sample_size` set to {args.resolution // 8} latents; "
        "no weight changes shape); erased with `sfr_diffusion.erase(pipe, \"cat\", "
        "method=SFROnConfig(forget_loss=\"remap\", mask_batches=1), data=<4 random images captioned \"a photo of a "
        "cat\" / \"a photo of a dog\">, training=TrainingArguments(max_train_steps="
        f"{args.iterations}, forget_batch_size=1, remain_batch_size=1, mixed_precision=…, "
        f"trainable=\"{args.trainable}\", original=\"copy\"), evaluate=False)`; the concept is remapped onto the "
        "empty prompt; "
        f"{trained:,} of the UNet's {parameters:,} weights train; {iterations} (each a forget step and a remain "
        "step: Adam's moments and the saliency mask exist from the first step on). Weights in fp32 / bf16: "
        + ", ".join(
            f"{label} {gib(4 * counts[name]):.2f} / {gib(2 * counts[name]):.2f} GiB"
            for name, label in (("unet", "UNet"), ("vae", "VAE"), ("text_encoder", "text encoder"))
        )
        + ".",
        "- Peak RSS: `ru_maxrss` of a fresh process per setting, read after `erase()` returns; absolute (Python, "
        "torch, the pipeline, the data and the erasure), nothing subtracted. A *load only* process (the same imports, "
        f"pipeline and data, no `erase()`) peaks at {gib(load['peak_rss_bytes']):.2f} GiB. The two *sampled* rows "
        "place the peak in time: the resident memory read from `/proc/self/statm` every 0.05 s by a thread of the "
        "same process, split at the first `PhaseEvent` callback (a spike shorter than that can be missed, so each is "
        "at most the `ru_maxrss` above).",
        "",
        *rows,
        "",
        "What each run held during training (read at its first optimizer step; the frozen copy is the one "
        "`UNet2DConditionModel` that `erase()` created):",
        "",
        *dtypes,
        "",
        "- Reading: under bf16 everything that does not train (VAE, text encoder, the UNet weights outside the "
        "trained selection, θ₀) is held in bf16 while training, which shrinks the training state above. The "
        "originals of the cast weights are kept on the CPU and put back bit for bit afterwards (the export holds the "
        "user's VAE and text encoder, unrounded): on a GPU they leave the card, but on this CPU-only machine they "
        "stay in the same memory as the bf16 copies, so the process's peak does not fall here. The peak a GPU would "
        "save is the training-state difference; it has not been measured on a GPU.",
        f"- {all_note}",
        f"<!-- {SECTION}:end -->",
    ]) + "\n"  # fmt: skip


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child is not None:
        report = child(json.loads(args.child))
        report["library"] = str(Path(sfr_diffusion.__file__).parent)
        print(RESULT_PREFIX + json.dumps(report), flush=True)
        return {}
    start = time.perf_counter()
    common = {"size": args.size, "resolution": args.resolution, "iterations": args.iterations}
    reports = {}
    with tempfile.TemporaryDirectory(prefix="sfr-diffusion-library-") as folder:
        sources = snapshot_library(Path(folder))
        for mode in MODES:
            reports[mode] = run_child({**common, "mode": mode, "trainable": args.trainable}, Path(folder))
            print(f"{mode}: peak RSS {gib(reports[mode]['peak_rss_bytes']):.2f} GiB", file=sys.stderr, flush=True)
    wall_seconds = time.perf_counter() - start
    print(json.dumps(reports, indent=2))
    if not args.no_write:
        command = "python benchmarks/memory_mixed_precision.py " + " ".join(sys.argv[1:] if argv is None else argv)
        write_section(args.output, render(args, command.strip(), reports, wall_seconds, sources))
    return reports


if __name__ == "__main__":
    main()
