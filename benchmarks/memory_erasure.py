"""Peak memory of an erasure against one plain fine-tune pass at the same batch: SFR-on against FT, full weights and
LoRA, on the SD-1.4, SDXL and FLUX.1-dev layouts (CPU, random weights).

    python benchmarks/memory_erasure.py --results_json docs/memory_erasure.json   # measure; write BENCHMARKS.md
    python benchmarks/memory_erasure.py --layouts sd-1.4 --no_write               # one layout, print only
    python benchmarks/memory_erasure.py --render_only --results_json docs/memory_erasure.json   # section from JSON
    python benchmarks/memory_erasure.py --size tiny --resolution 16 --no_write    # smoke run on the tiny layouts

Four modes, each through ``sfr_diffusion.erase()`` with ``trainable="all"`` and ``evaluate=False``, on random images
captioned "a photo of a cat" (the concept erased, the forget set) and "a photo of a dog" (the remain set):

- ``ft``: ``method=FTConfig()``, the plain fine-tune pass: ``--steps`` optimizer steps on remain batches of
  ``--batch_size``;
- ``sfr_on``: ``method=SFROnConfig(remap_target="a photo of a dog", mask_batches=1, mask_groups=1)``: a saliency mask
  from one batch of each set, then ``--steps`` iterations of a forget step (the cat captions remapped onto the frozen
  original's prediction for the dog caption) and a remain step (distilling the frozen original), each at
  ``--batch_size``;
- ``ft_lora`` and ``sfr_on_lora``: the same with ``TrainingArguments(lora_rank=8)`` (adapters on the attention
  projections; θ₀ is the denoiser with its adapters off, so there is no frozen copy);
- ``sfr_on_lora_groups``: ``sfr_on_lora`` with ``SFROnConfig(mask_groups=4)`` (the default under LoRA), the Fisher
  of the adapted base weights measured a quarter at a time.

Each mode runs in a fresh process whose peak resident memory (``ru_maxrss``: Python, torch, the pipeline, the data and
the erasure) is read after ``erase()`` returns; a *load only* process (the same imports, pipeline and data, no
``erase()``) gives the baseline that the erasure's own increment is measured from. Every process imports one copy of
``sfr_diffusion/`` taken when the script starts, so that all modes measure the same code, and is stopped if its
resident memory passes ``--max_rss_gib`` (this machine's memory is shared with other jobs).

The denoisers keep the real layouts' widths; where a mode does not fit that budget, their depth is cut (never their
width), per layout and kind of weights, as :data:`DEPTHS` says and the section repeats. The frozen parts are not what
is compared: the VAEs are the real ones and the text encoders keep their real output widths (768 for CLIP ViT-L/14,
1280 for OpenCLIP bigG/14, 4096 for T5-XXL) but have one layer and a byte-level vocabulary (T5-XXL alone would take
19 GB in fp32). Prompts are encoded once and cached, so they add only their weights.
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
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from memory import RssSampler, gib, peak_rss_bytes, rss_bytes, snapshot_library
from reporting import git_commit, machine_description, write_section

import sfr_diffusion
from sfr_diffusion import FTConfig, SFROnConfig, TrainingArguments, erase
from sfr_diffusion.adapters import target_module_names
from sfr_diffusion.original import PrecomputedOriginal
from sfr_diffusion.testing.data import random_captioned_images
from sfr_diffusion.testing.layouts import (
    clip_tokenizer,
    flux_configs,
    flux_pipeline,
    stable_diffusion_configs,
    stable_diffusion_pipeline,
    stable_diffusion_xl_configs,
    stable_diffusion_xl_pipeline,
    t5_tokenizer,
)

ROOT = Path(__file__).resolve().parent.parent
SECTION = "memory-erasure"
CONCEPT, CAPTIONS = "cat", ("a photo of a cat", "a photo of a dog")  # the concept erased; the images' captions
REMAP_TARGET = CAPTIONS[1]  # a remain prompt: the forget captions are pulled onto the original's prediction for it
MODES = ("ft", "sfr_on", "ft_lora", "sfr_on_lora", "sfr_on_lora_groups")
LORA_MASK_GROUPS = 4  # sfr_on_lora_groups: SFROnConfig(mask_groups=4), a quarter of the weights' Fisher at a time
MODE_LABELS = {
    "load": "load only",
    "ft": "FT",
    "sfr_on": "SFR-on",
    "ft_lora": "FT LoRA",
    "sfr_on_lora": "SFR-on LoRA",
    "sfr_on_lora_groups": f"SFR-on LoRA, Fisher in {LORA_MASK_GROUPS} groups",
}
LORA_RANK = 8
# SFR-on's peak at most this many times the plain fine-tune's (the goals)
GOALS = {"full": 1.25, "lora": 1.1, "lora_groups": 1.1}
RESULT_PREFIX = "MEMORY_RESULT "
# glibc's malloc raises its mmap threshold as large blocks are freed (up to 32 MiB), after which tensors of up to that
# size come from the heap and stay resident once freed: a phase's peak would then linger into the next one and the
# peaks depend on the order of allocations more than on what is alive. A fixed 1 MiB threshold returns every tensor of
# 1 MiB or more to the system when it is freed, so the peak RSS follows the memory alive at once (as the accelerator's
# allocated memory would), in every mode alike.
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**20)}


@dataclass(frozen=True)
class Layout:
    builder: object  # sfr_diffusion.testing.layouts' pipeline builder
    configs: object  # and its configs function
    size: str  # the real size's name there
    model: str  # the checkpoint whose layout it is
    denoiser: str  # the pipeline's attribute
    text_encoders: dict[str, str]  # component → "clip" or "t5"


LAYOUTS = {
    "sd-1.4": Layout(
        stable_diffusion_pipeline,
        stable_diffusion_configs,
        "sd-1.4",
        "CompVis/stable-diffusion-v1-4",
        "unet",
        {"text_encoder": "clip"},
    ),
    "sdxl": Layout(
        stable_diffusion_xl_pipeline,
        stable_diffusion_xl_configs,
        "sdxl-base-1.0",
        "stabilityai/stable-diffusion-xl-base-1.0",
        "unet",
        {"text_encoder": "clip", "text_encoder_2": "clip"},
    ),
    "flux": Layout(
        flux_pipeline,
        flux_configs,
        "flux-dev",
        "black-forest-labs/FLUX.1-dev",
        "transformer",
        {"text_encoder": "clip", "text_encoder_2": "t5"},
    ),
}


@dataclass(frozen=True)
class Depth:
    label: str  # how the denoiser's depth was cut, for the section
    overrides: dict  # its config entries that differ from the real layout's


# Per layout and kind of weights ("full": all four modes; "lora": the LoRA modes again, deeper where they fit), the
# deepest denoiser whose runs stay under ~7 GiB at 128 px, batch 2, in fp32. Measured: the rest of the process
# (Python, torch, VAE, text encoders, data) ≈ 0.85 GiB; FT ≈ 18 bytes a parameter above it (fp32 weights 4, gradients
# 4, Adam's moments 8, activations), SFR-on ≈ 25 (+ the frozen copy 4, the mask 1); LoRA ≈ 4 bytes a parameter and
# activations, SFR-on 8–11 more per adapted weight (its mask's Fisher pass). Hence ≲ 250M parameters for full
# weights (SD-1.4 whole, 860M, would need ≈ 21 GiB); for LoRA, SD-1.4 whole, SDXL at 744M (211M adapted) and FLUX.1
# at 687M (94M adapted); SDXL whole (2.6B, 955M adapted) and FLUX.1 whole (11.9B) do not fit even for LoRA.
DEPTHS = {
    "sd-1.4": {
        "full": Depth(
            "one ResNet per level instead of two, three levels (320, 640, 1280 channels, cross-attention at the "
            "first two) instead of four, no middle block",
            {
                "layers_per_block": 1,
                "block_out_channels": (320, 640, 1280),
                "mid_block_type": None,
                "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            },
        ),
        "lora": Depth("whole (no cut)", {}),
    },
    "sdxl": {
        "full": Depth(
            "the first two levels (320 and 640 channels, 2 ResNets and 2 transformer layers at 640, as in SDXL) and "
            "the middle block at 640; the third level (1280 channels, 10 transformer layers) removed",
            {
                "block_out_channels": (320, 640),
                "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
                "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
                "attention_head_dim": (5, 10),
                "transformer_layers_per_block": (1, 2),
            },
        ),
        "lora": Depth(
            "one ResNet per level instead of two; 1, 2, 3 transformer layers per level instead of 1, 2, 10",
            {"layers_per_block": 1, "transformer_layers_per_block": (1, 2, 3)},
        ),
    },
    "flux": {
        "full": Depth(
            "0 double-stream + 1 single-stream block instead of 19 + 38 (one double-stream block, 404M with the "
            "embedders, needs ≈ 8.5 GiB under SFR-on)",
            {"num_layers": 0, "num_single_layers": 1},
        ),
        "lora": Depth(
            "1 double-stream + 2 single-stream blocks instead of 19 + 38 (benchmark_gpu.py's K + 2K at K = 1)",
            {"num_layers": 1, "num_single_layers": 2},
        ),
    },
}
TINY_DEPTH = Depth("the tiny layout (no cut)", {})


def text_encoder_cut(kind: str) -> dict:
    """One layer and the offline tokenizers' vocabularies, at the real output width (which the denoiser reads)."""
    if kind == "clip":
        return {"num_hidden_layers": 1, "intermediate_size": 64, "vocab_size": len(clip_tokenizer())}
    return {"num_layers": 1, "d_ff": 64, "num_heads": 4, "d_kv": 8, "vocab_size": len(t5_tokenizer())}


def pipeline_overrides(layout_name: str, size: str, depth: dict, resolution: int) -> dict[str, dict]:
    """The layout's config overrides: the denoiser's depth, the text encoders' cut and the training resolution (the
    UNet's ``sample_size`` in latents; Flux works at the VAE's ``sample_size``); no weight changes shape."""
    layout = LAYOUTS[layout_name]
    overrides: dict[str, dict] = {layout.denoiser: dict(depth), "vae": {"sample_size": resolution}}
    if layout.denoiser == "unet":
        overrides["unet"]["sample_size"] = resolution // vae_factor(layout_name, size)
    if size != "tiny":
        overrides |= {name: text_encoder_cut(kind) for name, kind in layout.text_encoders.items()}
    return overrides


def vae_factor(layout_name: str, size: str) -> int:
    size = size if size == "tiny" else LAYOUTS[layout_name].size
    return 2 ** (len(LAYOUTS[layout_name].configs(size)["vae"]["block_out_channels"]) - 1)


def depths_for(layout_name: str, size: str) -> dict[str, Depth]:
    return {"full": TINY_DEPTH, "lora": TINY_DEPTH} if size == "tiny" else DEPTHS[layout_name]


# What the measured processes execute besides the library, copied with it.
SNAPSHOT_SCRIPTS = tuple(Path(__file__).resolve().with_name(name) for name in ("memory_erasure.py", "memory.py",
                                                                              "reporting.py"))  # fmt: skip


def library_committed() -> bool:
    """Whether ``sfr_diffusion/`` is as the current commit has it (other files may differ: the commit's "uncommitted
    changes" mark counts every tracked file)."""
    status = subprocess.run(["git", "status", "--porcelain", "--", "sfr_diffusion"], cwd=ROOT, capture_output=True,
                            text=True, check=False)  # fmt: skip
    return status.returncode == 0 and not status.stdout.strip()


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors`."""
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


def child(settings: dict) -> dict:
    """One measured run (in its own process): build the pipeline and data; unless "load", erase in `settings`' mode."""
    start = time.perf_counter()
    layout = LAYOUTS[settings["layout"]]
    overrides = pipeline_overrides(settings["layout"], settings["size"], settings["depth"], settings["resolution"])
    pipeline = layout.builder(
        settings["size"] if settings["size"] == "tiny" else layout.size, seed=0, overrides=overrides
    )
    pipeline.set_progress_bar_config(disable=True)
    dataset = random_captioned_images(4 * settings["batch_size"], settings["resolution"], CAPTIONS)
    denoiser = getattr(pipeline, layout.denoiser)
    lora = "_lora" in settings["mode"]
    training = TrainingArguments(
        max_train_steps=settings["steps"],
        forget_batch_size=settings["batch_size"],
        remain_batch_size=settings["batch_size"],
        mixed_precision=settings["mixed_precision"],
        trainable="all",
        lora_rank=LORA_RANK if lora else None,
    )
    frozen = ["vae", *layout.text_encoders]
    report = {
        "mode": settings["mode"],
        "build_seconds": round(time.perf_counter() - start, 1),
        "parameters": {
            name: sum(p.numel() for p in getattr(pipeline, name).parameters()) for name in (layout.denoiser, *frozen)
        },
        # The weights LoRA adapts (attention projections), whose Fisher SFR-on's LoRA mask is measured on.
        "adapted_parameters": sum(
            denoiser.get_submodule(name).weight.numel()
            for name in target_module_names(denoiser, training.lora_targets)
        ),
    }
    if settings["mode"] == "load":
        report["peak_rss_bytes"] = peak_rss_bytes()
        return report

    existing = {id(m) for m in gc.get_objects() if type(m) is type(denoiser)}
    seen: dict = {}

    def at_first_step(event) -> None:
        if seen:
            return
        seen["first_step_end"] = time.perf_counter()
        gc.collect()
        copies = [m for m in gc.get_objects() if type(m) is type(denoiser) and id(m) not in existing]
        trained = [p for p in event.model.parameters() if p.requires_grad]
        seen["trained_parameters"] = sum(p.numel() for p in trained)
        seen["frozen_copy_bytes"] = storage_bytes([t for m in copies for t in (*m.parameters(), *m.buffers())])
        precomputed = [o for o in gc.get_objects() if isinstance(o, PrecomputedOriginal)]
        seen["precomputed_target_bytes"] = sum(o.nbytes for o in precomputed)  # what is left after this step's
        seen["optimizer_state_bytes"] = storage_bytes(
            [v for state in event.optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
        )

    if settings["mode"].startswith("sfr_on"):
        groups = LORA_MASK_GROUPS if settings["mode"] == "sfr_on_lora_groups" else 1
        method = SFROnConfig(remap_target=REMAP_TARGET, mask_batches=1, mask_groups=groups)
    else:
        method = FTConfig()
    sampler = RssSampler()
    sampler.start()
    erase_start = time.perf_counter()
    result = erase(
        pipeline, CONCEPT, method=method, data=dataset, training=training, evaluate=False, callbacks=(at_first_step,)
    )
    erase_end = time.perf_counter()
    sampler.stopped.set()
    sampler.join()
    report["peak_rss_bytes"] = peak_rss_bytes()
    report["erase_seconds"] = round(erase_end - erase_start, 1)
    # Sampled, so a spike shorter than the interval can be missed: each is at most the ru_maxrss above.
    report["sampled_peak_bytes"] = {
        "until_first_step_end": sampler.peak(erase_start, seen["first_step_end"]),
        "after_first_step": sampler.peak(seen["first_step_end"], erase_end),
    }
    report["mask_bytes"] = storage_bytes(result.mask.values()) if result.mask is not None else 0
    report["steps"] = result.steps
    report["method_config"] = result.config["method_config"]
    report |= {key: value for key, value in seen.items() if key != "first_step_end"}
    return report


def run_child(settings: dict, library: Path, max_rss_bytes: int) -> dict:
    """Run one setting in a fresh Python process that imports ``sfr_diffusion`` from `library`; return its report.
    A process whose resident memory passes `max_rss_bytes` is stopped and reported as such."""
    command = [sys.executable, str(library / "benchmarks" / Path(__file__).name), "--child", json.dumps(settings)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(library), os.environ.get("PYTHONPATH")])),
        "TQDM_DISABLE": "1",
        **ALLOCATOR_ENV,
    }
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    over: list[int] = []

    def watch() -> None:
        while process.poll() is None:
            try:
                rss = rss_bytes(process.pid)
            except (OSError, IndexError):  # the process just ended
                return
            if rss > max_rss_bytes:
                over.append(rss)
                process.kill()
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stdout, _ = process.communicate()
    watcher.join()
    if over:
        return {"mode": settings["mode"], "stopped_at_bytes": over[0], "peak_rss_bytes": None}
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if process.returncode != 0 or not lines:  # reported in its cell; the other runs go on
        return {
            "mode": settings["mode"],
            "peak_rss_bytes": None,
            "error": f"exit {process.returncode}: {stdout[-2000:]}",
        }
    report = json.loads(lines[-1][len(RESULT_PREFIX) :])
    if Path(report.pop("library")) != library / "sfr_diffusion":
        raise RuntimeError(f"The {settings['mode']!r} run imported sfr_diffusion from elsewhere than {library}.")
    return report


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layouts", nargs="+", choices=tuple(LAYOUTS), default=list(LAYOUTS), help="Layouts.")
    parser.add_argument(
        "--size",
        choices=("real", "tiny"),
        default="real",
        help="real: the layouts' widths, depth cut as DEPTHS says; tiny: the tiny layouts (smoke run).",
    )
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="The erasures measured.")
    parser.add_argument("--resolution", type=int, default=128, help="Image side in pixels.")
    parser.add_argument("--batch_size", type=int, default=2, help="Forget and remain batch of every mode.")
    parser.add_argument(
        "--steps",
        type=int,
        default=2,
        help="Optimizer steps of FT / iterations of SFR-on (Adam's state exists from the first on).",
    )
    parser.add_argument(
        "--mixed_precision",
        nargs="+",
        choices=("no", "bf16"),
        default=["no"],
        help="Each measured in turn; the goals are judged in fp32 (no).",
    )
    parser.add_argument(
        "--max_rss_gib",
        type=float,
        default=7.5,
        help="A run whose resident memory passes this is stopped and reported as not fitting.",
    )
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md", help="Where the section is written.")
    parser.add_argument("--no_write", action="store_true", help="Print the results; leave BENCHMARKS.md alone.")
    parser.add_argument("--results_json", type=Path, help="Also write the results here (read by --render_only).")
    parser.add_argument(
        "--render_only", action="store_true", help="Measure nothing: render the section from --results_json."
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: the settings of one measured run (JSON)
    args = parser.parse_args(argv)
    for name in ("batch_size", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}.")
    if args.render_only and args.results_json is None:
        parser.error("--render_only renders --results_json: give it.")
    size = "tiny" if args.size == "tiny" else None
    for name in args.layouts:
        multiple = vae_factor(name, size or "real") * (2 if name == "flux" else 1)  # Flux packs 2×2 latents
        if args.resolution < multiple or args.resolution % multiple:
            parser.error(f"--resolution must be a positive multiple of {multiple} for {name}, got {args.resolution}.")
    return args


FISHER_GROUPS = {"lora_groups": LORA_MASK_GROUPS}  # the Fisher pass holds this share of its estimates at a time
KIND_LABELS = {"full": "full", "lora": "LoRA", "lora_groups": f"LoRA, Fisher in {LORA_MASK_GROUPS} groups"}
PAIRS = {  # SFR-on and the fine-tune it is held to
    "full": ("sfr_on", "ft"),
    "lora": ("sfr_on_lora", "ft_lora"),
    "lora_groups": ("sfr_on_lora_groups", "ft_lora"),
}


def ratio_cell(ratio: dict) -> str:
    increment = "–" if ratio["increment"] is None else f"× {ratio['increment']:.2f}"
    return f"× {ratio['peak']:.2f} ({increment})"


def summarise(group: dict, whole: dict | None) -> dict:
    """Per kind of weights whose two modes both ran: SFR-on's peak over FT's (whole process, and the increments over
    the load-only process); for full weights on a cut denoiser, also each mode's bytes per denoiser parameter above the
    rest of the process (the load-only peak less the denoiser's fp32 weights) and the peaks at the whole denoiser's
    parameter count (`whole`) on the same rest.

    Full weights extrapolate: their weights, gradients, Adam's moments, frozen copy and mask all grow in proportion to
    the parameters (activations are taken to grow with them too). LoRA does not: its SFR-on's extra grows with the
    weights it adapts and its activations with the depth, in shares that differ between cuts; it is reported as
    measured."""
    runs, load, parameters = group["runs"], group["runs"]["load"], group["parameters"]
    summary = {}
    if load["peak_rss_bytes"] is None:
        return summary
    for kind, (sfr, ft) in PAIRS.items():
        if any(runs.get(m, {}).get("peak_rss_bytes") is None for m in (sfr, ft)):
            continue
        peaks = {m: runs[m]["peak_rss_bytes"] for m in (sfr, ft)}
        increments = {m: peak - load["peak_rss_bytes"] for m, peak in peaks.items()}
        # No increment ratio when FT's peak is the load-only one (a tiny model, where the imports set the peak).
        increment = increments[sfr] / increments[ft] if increments[ft] > 0 else None
        summary[kind] = {"peak": peaks[sfr] / peaks[ft], "increment": increment}
        if kind == "full":
            rest = load["peak_rss_bytes"] - 4 * parameters
            per_parameter = {m: (peak - rest) / parameters for m, peak in peaks.items()}
            summary[kind]["bytes_per_parameter"] = per_parameter
            if whole is not None and whole["parameters"] != parameters:
                at_whole = {m: rest + per_parameter[m] * whole["parameters"] for m in (sfr, ft)}
                summary[kind]["extrapolated"] = {**at_whole, "peak": at_whole[sfr] / at_whole[ft]}
        else:
            summary[kind]["extra_bytes_per_adapted_weight"] = (peaks[sfr] - peaks[ft]) / group["adapted_parameters"]
    return summary


def measure(args, library: Path, whole: dict) -> list[dict]:
    """One group per layout, depth and precision: the load-only process and each mode measured there."""
    groups = []
    size = "tiny" if args.size == "tiny" else "real"
    for layout_name in args.layouts:
        depths = depths_for(layout_name, size)
        for precision in args.mixed_precision:
            plan = {"full": list(args.modes)}
            lora_modes = [m for m in args.modes if "_lora" in m]
            if depths["lora"] != depths["full"] and lora_modes:
                plan["lora"] = lora_modes
            for kind, modes in plan.items():
                depth = depths[kind]
                common = {
                    "layout": layout_name,
                    "size": size,
                    "depth": depth.overrides,
                    "resolution": args.resolution,
                    "batch_size": args.batch_size,
                    "steps": args.steps,
                    "mixed_precision": precision,
                }
                group = {
                    "layout": layout_name,
                    "depth_kind": kind,
                    "depth": depth.label,
                    "overrides": depth.overrides,
                    "mixed_precision": precision,
                    "runs": {},
                }
                for mode in ("load", *modes):
                    report = run_child({**common, "mode": mode}, library, int(args.max_rss_gib * 2**30))
                    group["runs"][mode] = report
                    peak = report["peak_rss_bytes"]
                    shown = f"{gib(peak):.2f} GiB" if peak else cell(report)
                    print(
                        f"{layout_name} [{kind} depth, {precision}] {mode}: peak RSS {shown}",
                        file=sys.stderr,
                        flush=True,
                    )
                counted = [run for run in group["runs"].values() if "parameters" in run]  # failed runs count nothing
                group["parameters"] = counted[0]["parameters"][LAYOUTS[layout_name].denoiser] if counted else 0
                group["adapted_parameters"] = counted[0]["adapted_parameters"] if counted else 0
                group["ratios"] = summarise(group, whole.get(layout_name))
                groups.append(group)
    return groups


def cell(run: dict | None) -> str:
    if run is None:
        return "—"
    if "error" in run:
        return "failed (the JSON has its output)"
    if run["peak_rss_bytes"] is None:
        return f"> {gib(run['stopped_at_bytes']):.1f} GiB (stopped)"
    return f"{gib(run['peak_rss_bytes']):.2f} GiB"


def millions(count: float) -> str:
    return f"{count / 1e6:,.0f}M" if count >= 1e7 else f"{count / 1e6:.2f}M"


def verdict(value: float, goal: float) -> str:
    shown = f"{value:.3f}" if round(value, 2) == goal else f"{value:.2f}"  # 1.102 is not "1.10, not met"
    return f"× {shown}, " + ("met" if value <= goal else "**not met**")


def depth_name(group: dict, tiny: bool) -> str:
    if tiny:
        return "tiny"
    return "whole" if not group["overrides"] else f"cut {'A' if group['depth_kind'] == 'full' else 'B'}"


def render(results: dict) -> str:
    settings = results["settings"]
    tiny = settings["size"] == "tiny"
    whole = results["whole_parameters"]
    groups = results["groups"]
    peaks = [
        "| layout | denoiser measured (LoRA adapts) | precision | load only | FT | SFR-on | SFR-on / FT (increments) "
        "| FT LoRA | SFR-on LoRA | SFR-on LoRA / FT LoRA (increments) | SFR-on LoRA, Fisher in "
        f"{LORA_MASK_GROUPS} groups | / FT LoRA (increments) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for group in groups:
        runs, load = group["runs"], group["runs"]["load"]
        ratios = {kind: ratio_cell(r) for kind, r in group["ratios"].items()}
        peaks.append(
            f"| {group['layout']} | {depth_name(group, tiny)}: "
            f"{millions(group['parameters'])} ({millions(group['adapted_parameters'])})"
            f" | {group['mixed_precision']} | {cell(load)} | {cell(runs.get('ft'))} | {cell(runs.get('sfr_on'))} | "
            f"{ratios.get('full', '—')} | {cell(runs.get('ft_lora'))} | {cell(runs.get('sfr_on_lora'))} | "
            f"{ratios.get('lora', '—')} | {cell(runs.get('sfr_on_lora_groups'))} | "
            f"{ratios.get('lora_groups', '—')} |"
        )
    scaled = [
        "| layout | denoiser measured | bytes per parameter: FT / SFR-on | SFR-on / FT measured | whole denoiser | "
        "FT / SFR-on at whole size | SFR-on / FT at whole size |",
        "|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for group in [g for g in groups if g["mixed_precision"] == "no"]:
        name = group["layout"]
        measured = f"{depth_name(group, tiny)}: {millions(group['parameters'])}"
        full, lora = group["ratios"].get("full"), group["ratios"].get("lora")
        lora_groups = group["ratios"].get("lora_groups")
        if full is not None:
            per, extrapolated = full["bytes_per_parameter"], full.get("extrapolated")
            verdict_line = f"{name} full weights {verdict(full['peak'], GOALS['full'])} measured ({measured})"
            if extrapolated:
                counts = whole[name]
                scaled.append(
                    f"| {name} | {measured} | {per['ft']:.1f} / {per['sfr_on']:.1f} | "
                    f"{verdict(full['peak'], GOALS['full'])} | {millions(counts['parameters'])} | "
                    f"{gib(extrapolated['ft']):.1f} / {gib(extrapolated['sfr_on']):.1f} GiB | "
                    f"{verdict(extrapolated['peak'], GOALS['full'])} |"
                )
                verdict_line += f", {verdict(extrapolated['peak'], GOALS['full'])} at whole size (estimate)"
            verdicts.append(verdict_line)
        if lora is not None and not any(
            g["layout"] == name and g["mixed_precision"] == "no" and g["depth_kind"] == "lora" and g is not group
            for g in groups
        ):  # judged at the deepest cut the LoRA modes ran at
            verdicts.append(f"{name} LoRA {verdict(lora['peak'], GOALS['lora'])} measured ({measured})")
            if lora_groups is not None:
                verdicts.append(
                    f"{name} LoRA with the Fisher in {LORA_MASK_GROUPS} groups "
                    f"{verdict(lora_groups['peak'], GOALS['lora'])} measured ({measured})"
                )
    depths = []
    for name in dict.fromkeys(g["layout"] for g in groups):
        layout, counts = LAYOUTS[name], whole.get(name)
        line = f"- {name}: {layout.model}'s layout" + (
            f", whole denoiser {millions(counts['parameters'])}" if counts else ""
        )
        for group in [
            g for g in groups if g["layout"] == name and g["mixed_precision"] == groups[0]["mixed_precision"]
        ]:
            parameters = group["parameters"]
            used_by = "all four modes" if group["depth_kind"] == "full" else "the LoRA modes"
            line += f"; {depth_name(group, tiny)} ({millions(parameters)}) for {used_by}"
            line += f": {group['depth']}" if group["overrides"] else ""
            if group["depth_kind"] == "lora":
                floor = 16 * parameters  # fp32 weights, gradients and Adam's two moments
                line += (
                    f" (full weights not run there: FT alone needs ≥ 16 bytes a parameter for weights, gradients "
                    f"and Adam's moments, {gib(floor):.1f} GiB)"
                )
        depths.append(line + ".")
    attribution = [
        "| layout | weights | SFR-on − FT, measured | θ₀: frozen copy / precomputed targets | saliency mask | "
        "the rest of the difference | Fisher pass before the first step (8 bytes a weight it measures at once) | "
        "SFR-on's sampled peak: mask + first step / later steps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for group in [g for g in groups if g["mixed_precision"] == "no"]:
        for kind in group["ratios"]:
            sfr, ft = (group["runs"][m] for m in PAIRS[kind])
            measured = sfr["trained_parameters"] if kind == "full" else sfr["adapted_parameters"]
            difference = sfr["peak_rss_bytes"] - ft["peak_rss_bytes"]
            sampled = sfr["sampled_peak_bytes"]
            theta0_targets = sfr.get("precomputed_target_bytes", 0)
            attribution.append(
                f"| {group['layout']}, {depth_name(group, tiny)} | {KIND_LABELS[kind]} | "
                f"{gib(difference):+.2f} GiB | {gib(sfr['frozen_copy_bytes']):.2f} GiB / "
                f"{theta0_targets / 2**20:.1f} MiB | {gib(sfr['mask_bytes']):.3f} GiB | "
                f"{gib(difference - sfr['frozen_copy_bytes'] - theta0_targets - sfr['mask_bytes']):+.2f} GiB | "
                f"{gib(8 * measured / FISHER_GROUPS.get(kind, 1)):.2f} GiB ({millions(measured)} "
                f"{'trained' if kind == 'full' else 'adapted'}) | "
                f"{gib(sampled['until_first_step_end']):.2f} / {gib(sampled['after_first_step']):.2f} GiB |"
            )
    precision = " and ".join(f"`{p}`" for p in settings["mixed_precision"])
    models = (
        "- Models: random weights in the real layouts (`sfr_diffusion.testing.layouts`), the denoisers at their real "
        "widths and the depths below (cut where a mode would not fit); the VAEs are the real ones; the text encoders "
        "(frozen; prompts are encoded once and cached) keep their real output widths but have one layer and a "
        "byte-level vocabulary (T5-XXL alone is 19 GB in fp32). The resolution is low so that it runs on this CPU: "
        "the UNets' and VAEs' `sample_size` are lowered, no weight changes shape. A low resolution is the hard case "
        "for the goals (SFR-on's extra memory grows with the weights, the activations both modes hold with the "
        "pixels), a cut denoiser the easy one (the rest of the process weighs more): hence the second table."
        if not tiny
        else "- Models: the tiny layouts of `sfr_diffusion.testing.layouts` (a smoke run of the code)."
    )
    section = [
        f"<!-- {SECTION}:start -->",
        "## Peak memory of an erasure against a plain fine-tune: SFR-on vs FT, full weights and LoRA",
        "",
        f"- Command: `{results['command']}` ({results['wall_seconds'] / 60:.1f} minutes); date {results['date']}; "
        f"commit {results['commit']} at the start, `sfr_diffusion/` "
        + ("as committed" if results["library_committed"] else "with uncommitted changes")
        + f", every run importing one copy of it taken then (sha256 of its sources {results['library_sha256']}…); "
        f"machine: {results['machine']}.",
        f'- Each mode: `sfr_diffusion.erase(pipe, "cat", method=…, data=<{4 * settings["batch_size"]} random '
        f'{settings["resolution"]} px images captioned "a photo of a cat" / "a photo of a dog">, '
        f"training=TrainingArguments(max_train_steps={settings['steps']}, forget_batch_size={settings['batch_size']}, "
        f'remain_batch_size={settings["batch_size"]}, trainable="all", mixed_precision=…[, lora_rank={LORA_RANK}]), '
        "evaluate=False)` with `method=FTConfig()` (FT, the plain fine-tune: a remain step per step) or "
        f'`SFROnConfig(remap_target="{REMAP_TARGET}", mask_batches=1, mask_groups=1)` (SFR-on: the saliency mask '
        "from one batch of each set, then per iteration a forget step remapping the cat captions onto the frozen "
        "original's prediction for the dog caption and a remain step distilling the frozen original; θ₀'s "
        'predictions precomputed before the first step, `original="precomputed"`, the default: no copy of the '
        "denoiser), the same batch in every "
        f"step; precision {precision}. LoRA: rank {LORA_RANK} adapters on `to_q`, `to_k`, `to_v`, `to_out.0`; θ₀ is "
        "the denoiser with its adapters off (no frozen copy); SFR-on's mask comes from the Fisher of the adapted "
        f"base weights, in one pass or, with `mask_groups={LORA_MASK_GROUPS}` (the default under LoRA), a quarter of "
        "them at a time.",
        models,
        "- Peak RSS: `ru_maxrss` of a fresh process per mode, read after `erase()` returns (Python, torch, the "
        "pipeline, the data and the erasure); *load only*: a process with the same imports, pipeline and data and "
        "no `erase()`. Ratios of whole-process peaks, and in brackets of the increments over the load-only process. "
        + (
            "Every process ran with glibc's mmap threshold fixed at 1 MiB (`MALLOC_MMAP_THRESHOLD_=1048576`): a "
            "tensor of 1 MiB or more goes back to the system when freed, so a peak is the memory alive at once, not "
            "what the heap kept from an earlier phase. "
            if results.get("allocator_env")
            else ""
        )
        + f"A run whose resident memory passed {settings['max_rss_gib']} GiB would have been stopped (this machine's "
        "memory is shared with other jobs).",
        "",
        *peaks,
        "",
        *(
            [
                "Full weights at the whole denoiser's size (fp32): each mode's bytes per denoiser parameter above the "
                "rest of the process (the load-only peak less the denoiser's fp32 weights: Python, torch, the VAE, "
                "the text encoders, the data), and the peaks with the whole denoiser's parameter count put into them "
                "on the same rest: an estimate, which takes the activations to grow with the parameters too. LoRA is "
                "not extrapolated: SFR-on's extra grows with the weights LoRA adapts, the activations with the depth, "
                "in shares that differ from one cut to another.",
                "",
                *scaled,
                "",
            ]
            if len(scaled) > 2
            else []
        ),
        "Depths (widths never cut):",
        "",
        *depths,
        "",
        "Where SFR-on's extra memory goes (fp32; a frozen copy would be a denoiser `erase()` created, looked for at "
        "the first optimizer step, when the precomputed targets left are counted too; the mask is the one "
        "`erase()` returns; the Fisher pass is an estimate for the weights it measures, all trained ones for full "
        "weights and the adapted base weights for LoRA (its two estimates; each gradient is squared and freed as "
        "backward makes it); the sampled peaks are `/proc/self/statm` every 0.05 s, split at the end of the first "
        "optimizer step):",
        "",
        *attribution,
        "",
        "- Goals (SFR-on's whole-process peak over FT's, fp32): " + ("; ".join(verdicts) or "none measured") + ".",
        f"<!-- {SECTION}:end -->",
    ]
    return "\n".join(section) + "\n"


def whole_parameters(layouts: list[str]) -> dict:
    """The whole denoisers' parameter counts and the weights LoRA adapts in them, counted on the meta device."""
    counts = {}
    for name in layouts:
        layout = LAYOUTS[name]
        pipeline = layout.builder(layout.size, device="meta")
        denoiser = getattr(pipeline, layout.denoiser)
        targets = TrainingArguments().lora_targets
        counts[name] = {
            "parameters": sum(p.numel() for p in denoiser.parameters()),
            "adapted_parameters": sum(
                denoiser.get_submodule(m).weight.numel() for m in target_module_names(denoiser, targets)
            ),
        }
    return counts


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child is not None:
        report = child(json.loads(args.child))
        report["library"] = str(Path(sfr_diffusion.__file__).parent)
        print(RESULT_PREFIX + json.dumps(report), flush=True)
        return {}
    if args.render_only:
        results = json.loads(args.results_json.read_text())
    else:
        start = time.perf_counter()
        commit, committed = git_commit(ROOT), library_committed()  # the code measured: as the runs start
        whole = whole_parameters(args.layouts) if args.size != "tiny" else {}
        with tempfile.TemporaryDirectory(prefix="sfr-diffusion-library-") as folder:
            sources = snapshot_library(Path(folder), SNAPSHOT_SCRIPTS)
            groups = measure(args, Path(folder), whole)
        command = "python benchmarks/memory_erasure.py " + " ".join(sys.argv[1:] if argv is None else argv)
        results = {
            "command": command.strip(),
            "date": datetime.date.today().isoformat(),
            "commit": commit,
            "library_committed": committed,
            "library_sha256": sources,
            "machine": machine_description(),
            "wall_seconds": round(time.perf_counter() - start, 1),
            "settings": {
                key: getattr(args, key)
                for key in (
                    "layouts",
                    "size",
                    "modes",
                    "resolution",
                    "batch_size",
                    "steps",
                    "mixed_precision",
                    "max_rss_gib",
                )
            },
            "allocator_env": ALLOCATOR_ENV,
            "whole_parameters": whole,
            "groups": groups,
        }
        if args.results_json is not None:
            args.results_json.parent.mkdir(parents=True, exist_ok=True)
            args.results_json.write_text(json.dumps(results, indent=2) + "\n")
    section = render(results)
    if args.no_write:
        print(section)
    else:
        write_section(args.output, section)
    return results


if __name__ == "__main__":
    main()
