"""SFR-on against the baselines and retrain on the digits world: methods × families × forget targets, one run.

    python benchmarks/benchmark.py                      # the full run: DDPM, DiT and SD digits; digits 3, 0, 1, 5, 8
    python benchmarks/benchmark.py --models digits-ddpm --digits 3 7 --multi_digits
    python benchmarks/benchmark.py --quick              # a smoke run of every code path, into a temp folder
    python benchmarks/benchmark.py --resume             # after an interruption: reuse the finished runs
    python benchmarks/benchmark.py --no_attacks --relearn_steps 50   # no attacks / another attack budget
    python benchmarks/benchmark.py --methods sfr_on --ablations --forget_loss remap   # + erase-command options

For each model and forget digit every method gets the same iteration budget (``--iterations``) through the erase
command (``sfr_diffusion.commands.erase``, what ``scripts/erase_concept.py`` runs; options this script does not know
are passed on to it), with FA/RA tracked every ``--eval_every`` iterations (guidance 2) on ``--track_forget_samples``
samples of the digit and ``--track_samples`` per other class, fresh noise at every evaluation.

- Learning rates: on the first digit, each method (SFR-on and the baselines) runs the same grid, the model's SFR-on
  default × ``--lr_factors``, and keeps the rate that forgets soonest (the first tracked iteration after which FA ≤ 1%
  with RA ≥ base − 1 point holds at every later evaluation; ties and misses: lower final FA, then higher final RA);
  the other digits and SFR-on's ablations R, R+on and F+R+on use that rate. Digits 5 and 8 never served to tune a
  default.
- The final judgement of every final model (each method's, each ablation's, retrain's, and the base model's for
  reference): ``guidance_sweep`` at guidance 1, 2, 4 and 7.5 and the pipeline's own default, on
  ``--final_forget_samples`` samples of the digit and ``--final_samples`` per other class, the same noise at every
  scale. FA and RA are reported at their worst over the scales; FID-digits and the gap to *retrain* (the bundled
  recipe trained without the digit, cached; `sfr_diffusion.digits.retrain`) at guidance 2: the total-variation
  distance between the judge's label distributions for the forgotten digit and, averaged, for the other digits, and
  the RA and FID-digits differences.
- Attacks (``sfr_diffusion.attacks``: conditioning inversion, relearning, relearning after resetting the class
  embedding) on every final model at its chosen rate and on retrain, one budget and seed for all (the ``--attack_*``,
  ``--inversion_*`` and ``--relearn_*`` options, `AttackArguments`), judged on ``--attack_forget_samples`` samples of
  the digit and ``--attack_samples`` per other class: ASR and the steps to FA ≥ 50%. ``--no_attacks`` skips them.
- Several digits at once (``--multi_digits``, default 3 7 8): per model one SFR-on run erasing them together.
- A short extra run per method, in a fresh process, measures peak memory.

Tables, plots and the verdict go into BENCHMARKS.md, the numbers into the results JSON. A full run takes hours on 2
CPU cores; resumable with --resume. Estimated from measured unit costs on one torch thread (a judged sample, a training
iteration, an attack step, a retrain step) times the full run's counts: about 4 h for the DDPM, 2 h for DiT and 6.5 h
for SD, one model after another, of which retraining (cached for later runs) is about 0.5, 0.4 and 1 h. Most of the
rest is sampling for the judge: the tracked evaluations, the guidance sweeps and the attacks' evaluations, roughly a
third each. Two processes with different ``--models`` (and ``--results_json``) use both cores; ``--render_only``
merges their results (results with other settings, such as other digits, into a section of their own).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from reporting import FA_TARGET, git_commit, is_forgotten, iterations_to_forget, machine_description, write_section

from sfr_diffusion import load_pipeline
from sfr_diffusion.arguments import EvaluationArguments
from sfr_diffusion.attacks import ATTACKS, AttackArguments, run_attacks
from sfr_diffusion.cli import add_dataclass_arguments, dataclass_from_args
from sfr_diffusion.commands import erase as erase_command
from sfr_diffusion.digits import BUNDLED_ALIASES, DIGIT_NAMES
from sfr_diffusion.digits.metrics import guidance_sweep
from sfr_diffusion.digits.registry import DEFAULT_GUIDANCE_SCALE
from sfr_diffusion.digits.retrain import retrain
from sfr_diffusion.families import family_for
from sfr_diffusion.presets import learning_rate_for, preset_for

ROOT = Path(__file__).resolve().parent.parent
SWEPT_METHODS = ("sfr_on", "ft", "ga", "rl", "salun", "esd")
BASELINES = SWEPT_METHODS[1:]
# SFR-on's ablations (SPEC §1, the paper's Table 5): R = ascent + remain in one joint step; +on = the online
# fast-slow pair; +F = the adaptive forget weights (temperature λ); SFR-on adds the saliency mask S.
ABLATIONS = {
    "R": ["--method", "sfr_on", "--no_online", "--no_mask", "--temperature", "0"],
    "R+on": ["--method", "sfr_on", "--no_mask", "--temperature", "0"],
    "F+R+on": ["--method", "sfr_on", "--no_mask"],
}
LABELS = {"sfr_on": "SFR-on", "ft": "FT", "ga": "GA", "rl": "RL", "salun": "SalUn", "esd": "ESD"}
TITLES = {"ddpm": "DDPM", "dit": "DiT", "sd": "SD (text-to-image)", "sd3": "SD3 (flow-matching text-to-image)"}
# The final judgement's guidance scales (the pipeline's own default is added: DDPM 1, DiT 4, SD 7.5). A concept erased
# at one guidance can return at another, so FA and RA are reported at their worst over these.
GUIDANCE_SCALES = (1.0, 2.0, 4.0, 7.5)
# FID-digits and the gap to retrain stay at the judge's guidance, the one tracking uses.
GAP_GUIDANCE = float(DEFAULT_GUIDANCE_SCALE)
ASR_MARGIN = 0.05  # the verdict's "no easier to attack than retrain": ASR ≤ retrain's + 5 points
UNTUNED_DIGITS = (5, 8)  # no default (learning rates, method settings, the forgetting rule) was tuned on these
QUICK = dict(
    models=["digits-ddpm"], digits=[3], methods=["sfr_on", "ft"], ablations=["R"], iterations=4, eval_every=2,
    track_samples=2, track_forget_samples=4, final_samples=2, final_forget_samples=4, lr_factors=[1.0, 3.0],
    retrain_steps=20, memory_iterations=2, attack_samples=1, attack_forget_samples=4, attack_images=4,
    inversion_steps=2, relearn_steps=2, attack_evaluations=1,
)  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    # No abbreviations: options this script does not know go to the erase command, and must not be taken for a prefix
    # of one of ours.
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--models", nargs="+", default=list(BUNDLED_ALIASES), choices=sorted(BUNDLED_ALIASES))
    parser.add_argument(
        "--digits", type=int, nargs="+", default=[3, 0, 1, 5, 8],
        help="The first one is the learning-rate sweep's; 5 and 8 never served to tune a default.",
    )  # fmt: skip
    parser.add_argument(
        "--multi_digits", type=int, nargs="*", default=[3, 7, 8],
        help="Erased together by one SFR-on run per model (none: skip).",
    )  # fmt: skip
    parser.add_argument("--methods", nargs="+", default=list(SWEPT_METHODS), choices=SWEPT_METHODS)
    parser.add_argument("--ablations", nargs="*", default=list(ABLATIONS), choices=sorted(ABLATIONS))
    parser.add_argument("--iterations", type=int, default=100, help="The budget, the same for every method.")
    parser.add_argument("--eval_every", type=int, default=10)
    parser.add_argument("--track_samples", type=int, default=20, help="Tracked FA/RA: samples per other class.")
    parser.add_argument("--track_forget_samples", type=int, default=50, help="Tracked FA/RA: samples of the digit.")
    parser.add_argument("--final_samples", type=int, default=50, help="Final judgement: samples per other class.")
    parser.add_argument("--final_forget_samples", type=int, default=100, help="Final judgement: samples of the digit.")
    parser.add_argument("--lr_factors", type=float, nargs="+", default=[1 / 3, 1.0, 3.0])
    parser.add_argument("--retrain_steps", type=int, default=3000, help="The bundled recipe's steps.")
    parser.add_argument("--memory_iterations", type=int, default=3, help="Iterations of the peak-memory run.")
    parser.add_argument("--no_attacks", action="store_true", help="Skip the attacks.")
    parser.add_argument("--attack_samples", type=int, default=10, help="Attacks' judge: samples per other class.")
    parser.add_argument("--attack_forget_samples", type=int, default=50, help="Attacks' judge: samples of the digit.")
    add_dataclass_arguments(parser, AttackArguments, "attacks: one budget and seed for every model attacked")
    parser.add_argument("--output", type=Path, default=None, help="Default: BENCHMARKS.md (--quick: a temp folder).")
    parser.add_argument("--plots_dir", type=Path, default=None, help="Default: docs/ (--quick: next to --output).")
    parser.add_argument("--results_json", type=Path, default=None, help="Default: <plots_dir>/benchmark_methods.json")
    parser.add_argument("--quick", action="store_true", help=f"Smoke-run defaults (options given still win): {QUICK}.")
    parser.add_argument("--resume", action="store_true", help="Reuse the finished runs of an interrupted benchmark.")
    parser.add_argument(
        "--render_only", type=Path, nargs="+", default=None,
        help="Rewrite tables and plots from results JSONs (several: runs of different models, merged; those whose "
        "settings differ from the first's, such as the digits, in a section of their own).",
    )  # fmt: skip
    if parser.parse_known_args(argv)[0].quick:
        parser.set_defaults(**QUICK)
    args, erase_args = parser.parse_known_args(argv)
    if args.quick:
        # A smoke run never touches the repository's BENCHMARKS.md or docs/.
        args.output = args.output or Path(tempfile.mkdtemp(prefix="sfr-benchmark-quick-")) / "BENCHMARKS.md"
    args.output = args.output or ROOT / "BENCHMARKS.md"
    args.plots_dir = args.plots_dir or (args.output.parent if args.quick else ROOT / "docs")
    bad = [d for d in args.digits + args.multi_digits if d not in range(len(DIGIT_NAMES))]
    if bad:
        parser.error(f"--digits and --multi_digits must be 0..9, got {bad}.")
    if len(set(args.digits)) < len(args.digits) or len(set(args.multi_digits)) < len(args.multi_digits):
        parser.error("--digits and --multi_digits must not repeat a digit.")
    if len(args.multi_digits) == 1:
        parser.error("--multi_digits takes several digits to erase together, or none to skip.")
    if not args.methods:
        parser.error("--methods must name at least one method.")
    if args.iterations < 1 or args.eval_every < 1 or args.eval_every > args.iterations:
        parser.error("Need --iterations >= 1 and 1 <= --eval_every <= --iterations.")
    counts = (
        "track_samples track_forget_samples final_samples final_forget_samples attack_samples attack_forget_samples"
    )
    small = [f"--{name}" for name in counts.split() if getattr(args, name) < 1]
    if small:
        parser.error(f"{', '.join(small)} must be >= 1.")
    try:
        args.attack = None if args.no_attacks else dataclass_from_args(AttackArguments, args)
    except ValueError as error:
        parser.error(str(error))
    args.erase_args = erase_args
    args.results_json = args.results_json or args.plots_dir / "benchmark_methods.json"
    return args


def run_settings(args) -> dict:
    """What the numbers depend on: a resumed run with other settings starts over, and merged results must agree."""
    keys = "digits multi_digits iterations eval_every track_samples track_forget_samples final_samples"
    keys += " final_forget_samples lr_factors retrain_steps memory_iterations erase_args attack_samples"
    settings = {key: getattr(args, key) for key in (keys + " attack_forget_samples").split()}
    return settings | {
        "guidance_scales": list(GUIDANCE_SCALES),
        "attacks": None if args.attack is None else list(ATTACKS),
        "attack": None if args.attack is None else asdict(args.attack),
    }


def erase_argv(
    args, model: str, digits: list[int], method_args: list[str], output_dir: Path, **overrides
) -> list[str]:
    settings = {
        "max_train_steps": args.iterations,
        "eval_every": args.eval_every,
        "eval_samples_per_class": args.track_samples,
        "forget_samples_per_class": args.track_forget_samples,
        **overrides,
    }
    # Several digits: one run erasing them together, as separate values (a text-to-image model would take
    # "three,seven" for one prompt).
    concepts = [DIGIT_NAMES[d] for d in digits]
    argv = ["--pretrained_model_name_or_path", model, "--concept", *concepts, "--output_dir", str(output_dir)]
    for key, value in settings.items():
        argv += [f"--{key}"] if value is True else [f"--{key}", str(value)]
    return argv + method_args + args.erase_args


def judged(path, digits: list[int], args) -> dict:
    """The final judgement of a model (a folder or an alias) for erased `digits`: ``guidance_sweep`` at
    `GUIDANCE_SCALES` and the pipeline's default, every scale on the same noise, as the results JSON reads it back
    (classes keyed as strings). Per scale: FA, RA, FID-digits, each class's accuracy and judged label distribution;
    ``FA_worst``, ``RA_worst`` over the scales; ``seconds``."""
    start = time.perf_counter()
    sweep = guidance_sweep(
        load_pipeline(path),
        digits,
        scales=GUIDANCE_SCALES,
        samples_per_class=args.final_samples,
        forget_samples_per_class=args.final_forget_samples,
    )
    return json.loads(json.dumps(sweep)) | {"seconds": time.perf_counter() - start}


def at_guidance(final: dict, scale: float = GAP_GUIDANCE) -> dict:
    """A final judgement's metrics at one guidance scale (by default the gap's)."""
    return final["per_guidance"][str(float(scale))]


def attacked(args, path, digit: int) -> dict:
    """Every attack of `ATTACKS` on the model at `path` (an export or retrain's folder) for `digit`: the same budget,
    seed and judge for every model, so that their ASRs compare. ``{attack: its record}`` (curve, ASR, steps_to_half,
    budget, seconds)."""
    evaluation = EvaluationArguments(
        eval_samples_per_class=args.attack_samples, forget_samples_per_class=args.attack_forget_samples
    )
    pipeline = load_pipeline(path)
    pipeline.set_progress_bar_config(disable=True)
    results = run_attacks(pipeline, DIGIT_NAMES[digit], ATTACKS, arguments=args.attack, evaluation=evaluation)
    return json.loads(json.dumps(results["attacks"]))


def total_variation(p: list[float], q: list[float]) -> float:
    return 0.5 * sum(abs(a - b) for a, b in zip(p, q, strict=True))


def gap_to_retrain(final: dict, retrained: dict, digit: int) -> dict:
    """How far an erased model's final judgement is from retrain's (0 = indistinguishable by these measures); both at
    one guidance scale (see `at_guidance`)."""
    erased_labels, retrain_labels = final["label_distribution"], retrained["label_distribution"]
    others = [c for c in retrain_labels if int(c) != digit]
    return {
        "forget_tv": total_variation(erased_labels[str(digit)], retrain_labels[str(digit)]),
        "remain_tv": sum(total_variation(erased_labels[c], retrain_labels[c]) for c in others) / len(others),
        "RA_difference": final["RA"] - retrained["RA"],
        "FID_difference": final["FID"] - retrained["FID"],
    }


def holds_by_guidance(final: dict, base: dict, digits: list[int]) -> dict[str, bool]:
    """Per guidance scale of a final judgement: does FA ≤ 1% with RA ≥ base − 1 point hold, the base model judged at
    the same scale on the same noise? With several digits, FA is the highest of theirs."""
    holds = {}
    for scale, metrics in final["per_guidance"].items():
        fa = max(metrics["per_class_accuracy"][str(d)] for d in digits)
        holds[scale] = is_forgotten({"FA": fa, "RA": metrics["RA"]}, base["per_guidance"][scale]["RA"])
    return holds


class FinishedRuns:
    """Every finished run, saved to ``<results_json stem>.partial.json`` as it ends: an interrupted benchmark loses
    only the run in progress, and ``--resume`` reuses the saved runs (same settings; keyed by model, method, digit
    and learning rate, and apart: their attacks and the base and retrain judgements)."""

    def __init__(self, path: Path, settings: dict, resume: bool):
        self.path, self.settings, self.runs = path, settings, {}
        if resume and path.exists():
            saved = json.loads(path.read_text())
            if saved["settings"] == json.loads(json.dumps(settings)):
                self.runs = saved["runs"]
            else:
                print(f"Not resuming from {path}: it was run with other settings.", flush=True)

    def get_or_run(self, key: str, run) -> dict:
        if key not in self.runs:
            self.runs[key] = run()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            staging = self.path.with_name(self.path.name + ".tmp")
            staging.write_text(json.dumps({"settings": self.settings, "runs": self.runs}, default=str))
            staging.replace(self.path)
        return self.runs[key]


def run_one(
    args,
    model: str,
    digits: list[int],
    label: str,
    method_args: list[str],
    lr: float,
    tmp: Path,
    *,
    attack: bool,
    keep: bool = False,
) -> dict:
    """One erasure of `digits` through the erase command, judged (see `erase_and_judge`); with `attack` (unless
    ``--no_attacks``) its export is attacked before it is removed. `keep` leaves the export in `tmp` (the sweep's,
    until it has chosen the rate to attack). The erasure and its attacks are finished runs of their own: the rate a
    sweep chooses is attacked after the sweep, and a resumed run that lost an export erases again into it (same seed,
    same model) to attack it."""
    name = ",".join(map(str, digits))
    key = f"{model}|{label}|{name}|{lr!r}"
    output_dir = tmp / f"{model}-{label}-{name.replace(',', '+')}-{lr:g}"
    argv = erase_argv(args, model, digits, method_args, output_dir, learning_rate=lr)
    row = args.finished.get_or_run(key, lambda: erase_and_judge(args, digits, label, lr, argv, output_dir))
    if attack and args.attack is not None:

        def attack_export() -> dict:
            if not (output_dir / "model_index.json").exists():
                erase_command.main(argv)
            return attacked(args, output_dir, digits[0])

        row = row | {"attacks": args.finished.get_or_run(f"{key}|attacks", attack_export)}
    if not keep:
        shutil.rmtree(output_dir, ignore_errors=True)  # a folder of this run's temporary directory
    return row


def erase_and_judge(args, digits: list[int], label: str, lr: float, argv: list[str], output_dir: Path) -> dict:
    """One erasure through the erase command (a method is a list of its options), its export judged (and left for
    `run_one` to attack and remove)."""
    start = time.perf_counter()
    result = erase_command.main(argv)
    erase_seconds = time.perf_counter() - start
    history = result.history
    final = judged(output_dir, digits, args)
    # Several digits: each one's tracked FA as well (the rule itself is on their FA together, as the run's early
    # stop reads it).
    kept = ("step", "FA", "RA") + (("FA_per_concept",) if len(digits) > 1 else ())
    return {
        "method": label,
        **({"digit": digits[0]} if len(digits) == 1 else {"digits": digits}),
        "learning_rate": lr,
        "iterations_to_forget": iterations_to_forget(history, history[0]["RA"]),
        "history": [{k: h[k] for k in kept} for h in history],
        "final": final,
        "seconds_per_iteration": result.seconds["train"] / result.steps,
        "mask_seconds": result.seconds["mask"],
        "train_seconds": result.seconds["train"],
        "erase_seconds": erase_seconds,  # the erase command's wall time: training, tracking, export
        "mask_density": (result.mask_statistics or {}).get("density"),
    }


def sweep_key(row: dict) -> tuple:
    """Soonest to forget; among rates that never do (or tie), lower final FA, then higher final RA."""
    reached = row["iterations_to_forget"]
    last = row["history"][-1]
    return (reached is None, reached or 0, last["FA"], -last["RA"])


# Run in a fresh process so that its peak resident memory belongs to this erasure alone.
MEMORY_PROBE = """
import resource, sys, torch
from sfr_diffusion.commands.erase import main
main(sys.argv[1:])
cuda = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
print("PEAK_MEMORY", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, cuda)
"""


def peak_memory(args, model: str, digit: int, method_args: list[str], lr: float, tmp: Path) -> dict:
    """Peak memory of a short erasure without evaluation (load, data, mask, a few iterations, export).

    Resident memory of the whole process (Linux reports ``ru_maxrss`` in KiB), and on a GPU the peak allocated.
    """
    output_dir = tmp / "memory"
    short = dict(max_train_steps=args.memory_iterations, eval_every=args.memory_iterations, skip_eval=True)
    argv = erase_argv(args, model, [digit], method_args, output_dir, learning_rate=lr, **short)
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, *argv], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"The memory run of {method_args} failed:\n{done.stderr[-3000:]}")
    shutil.rmtree(output_dir, ignore_errors=True)
    resident, cuda = done.stdout.strip().splitlines()[-1].split()[1:]
    return {"resident": int(resident), "cuda": None if cuda == "None" else int(cuda)}


def benchmark_model(args, model: str, tmp: Path) -> dict:
    pipeline = load_pipeline(model)
    family = family_for(pipeline)
    base_lr = learning_rate_for(family, preset_for(pipeline))
    grid = [base_lr * f for f in args.lr_factors]
    sweep_digit, runs, best_lr, memory = args.digits[0], [], {}, {}
    finished = args.finished
    start = time.perf_counter()
    targets = [[d] for d in args.digits] + ([args.multi_digits] if args.multi_digits else [])
    # The base model, judged as every final model is: the "RA ≥ base − 1 point" of each guidance scale.
    base = {}
    for target in targets:
        name = ",".join(map(str, target))
        base[name] = finished.get_or_run(f"{model}|base|{name}", lambda target=target: judged(model, target, args))
    retrained, retrain_attacks = {}, {}
    for digit in args.digits:
        # Retrained (or found in the cache) only when a judgement or an attack still needs it, so a resumed run whose
        # retrain results are saved does not retrain.
        def retrained_model(digit=digit):
            return retrain(family.name, digit, steps=args.retrain_steps)

        retrained[digit] = finished.get_or_run(
            f"{model}|retrain|{digit}", lambda digit=digit: judged(retrained_model(digit), [digit], args)
        )
        if args.attack is not None:
            retrain_attacks[str(digit)] = finished.get_or_run(
                f"{model}|retrain|{digit}|attacks", lambda digit=digit: attacked(args, retrained_model(digit), digit)
            )
    for method in args.methods:
        method_args = ["--method", method]
        # The exports of the sweep stay until it has chosen a rate; the second pass reads the finished runs, attacks
        # the chosen rate's export and removes them all.
        sweep = [
            run_one(args, model, [sweep_digit], method, method_args, lr, tmp, attack=False, keep=True) for lr in grid
        ]
        best_lr[method] = min(sweep, key=sweep_key)["learning_rate"]
        runs += [
            run_one(args, model, [sweep_digit], method, method_args, lr, tmp, attack=lr == best_lr[method])
            | {"sweep": True}
            for lr in grid
        ]
        for digit in args.digits[1:]:
            runs.append(run_one(args, model, [digit], method, method_args, best_lr[method], tmp, attack=True))
        memory[method] = peak_memory(args, model, sweep_digit, method_args, best_lr[method], tmp)
    ablation_lr = best_lr.get("sfr_on", base_lr)
    for name in args.ablations:
        for digit in args.digits:
            runs.append(run_one(args, model, [digit], name, ABLATIONS[name], ablation_lr, tmp, attack=True))
        memory[name] = peak_memory(args, model, sweep_digit, ABLATIONS[name], ablation_lr, tmp)
    multi = None
    if args.multi_digits:
        sfr_args = ["--method", "sfr_on"]
        multi = run_one(args, model, args.multi_digits, "sfr_on", sfr_args, ablation_lr, tmp, attack=False)
    runs = [
        row | {"gap": gap_to_retrain(at_guidance(row["final"]), at_guidance(retrained[row["digit"]]), row["digit"])}
        for row in runs
    ]
    return {
        "model": model,
        "family": family.name,
        "iterations": args.iterations,
        "learning_rate_grid": grid,
        "best_learning_rate": best_lr | {name: ablation_lr for name in args.ablations},
        "base": base,
        "retrain": {str(d): m for d, m in retrained.items()},
        "retrain_attacks": retrain_attacks,
        "peak_memory_bytes": memory,
        "runs": runs,
        "multi": multi,
        "minutes": (time.perf_counter() - start) / 60,
    }


# ----------------------------------------------------------------------------------------------------------------
# Reporting


def selected_runs(result: dict) -> dict[str, dict[int, dict]]:
    """method → digit → the run at the method's chosen learning rate."""
    chosen: dict[str, dict[int, dict]] = {}
    for row in sorted(result["runs"], key=lambda r: method_order(r["method"])):
        if row["learning_rate"] == result["best_learning_rate"][row["method"]]:
            chosen.setdefault(row["method"], {})[row["digit"]] = row
    return chosen


def label(method: str) -> str:
    return LABELS.get(method, f"{method} (ablation)")


def seconds_to_forget(row: dict) -> float | None:
    its = row["iterations_to_forget"]
    return None if its is None else row["mask_seconds"] + its * row["seconds_per_iteration"]


def ratio_cell(base: dict, other: dict, measure, budget: int) -> str:
    """other / base per digit; when `other` never forgets, a lower bound from the budget."""
    mine, theirs = measure(base), measure(other)
    if mine is None:
        return "–"
    if theirs is None:
        bound = budget if measure is iterations_of else other["mask_seconds"] + budget * other["seconds_per_iteration"]
        return f"> {bound / mine:.1f}×"
    return f"{theirs / mine:.1f}×"


def iterations_of(row: dict) -> int | None:
    return row["iterations_to_forget"]


def reached_cell(iterations: int | None, budget: int) -> str:
    return f"> {budget}" if iterations is None else str(iterations)


def pct(value) -> str:
    return "–" if value is None else f"{100 * value:.0f}"


def digits_note(digits: list[int]) -> str:
    untuned = [d for d in digits if d in UNTUNED_DIGITS]
    if not untuned:
        return ""
    names = " and ".join(str(d) for d in untuned)
    return f" Digit{'s' if len(untuned) > 1 else ''} {names} never served to tune a default."


def render_family(result: dict, args_summary: dict) -> list[str]:
    chosen = selected_runs(result)
    digits = args_summary["digits"]
    budget = result["iterations"]
    title = TITLES.get(result["family"], result["family"])
    names = " / ".join(f"{d} ({DIGIT_NAMES[d]})" for d in digits)
    guidance = f"{GAP_GUIDANCE:g}"
    lines = [
        f"### {title}: `{result['model']}` ({result['minutes']:.0f} minutes)",
        "",
        f"Cells give digit {names}.{digits_note(digits)} FA, RA in %, each the worst over the final judgement's "
        f"guidance scales (the highest FA, the lowest RA); FID-digits and the gaps at guidance {guidance}: *gap* = "
        "total-variation distance to retrain's judged labels (forgotten digit / mean of the others; 0 = the same, "
        "1 = disjoint); ΔRA, ΔFID = erased − retrain.",
        *(
            f"Rows of {', '.join(label(m) for m in sup['methods'])}: from a later run with the same settings, "
            f"`{sup['command']}`"
            + (f" (on {sup['other_machine']}" if sup.get("other_machine") else " (the same machine")
            + "); their seconds and peak memory were measured apart from the other rows', so the verdict does not "
            "compare them."
            for sup in result.get("supplements", [])
        ),
        "",
        "| method | learning rate | iterations to forget | FA, worst over guidance | RA, worst over guidance "
        f"| FID-digits (g {guidance}) | gap forgotten | gap others | ΔRA | ΔFID | s / iteration | mask s "
        "| peak memory |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    retrain = result["retrain"]
    lines.append(
        "| **retrain** | – | – | "
        + " / ".join(pct(retrain[str(d)]["FA_worst"]) for d in digits)
        + " | "
        + " / ".join(pct(retrain[str(d)]["RA_worst"]) for d in digits)
        + " | "
        + " / ".join(f"{at_guidance(retrain[str(d)])['FID']:.1f}" for d in digits)
        + " | 0 | 0 | 0 | 0 | – | – | – |"
    )
    for method, by_digit in chosen.items():
        rows = [by_digit.get(d) for d in digits]

        def cells(fn, rows=rows) -> str:
            return " / ".join("–" if r is None else fn(r) for r in rows)

        memory = result["peak_memory_bytes"].get(method)
        lines.append(
            f"| {label(method)} | {result['best_learning_rate'][method]:.2g} | "
            + cells(lambda r: str(r["iterations_to_forget"] or f"> {budget}"))
            + " | "
            + cells(lambda r: pct(r["final"]["FA_worst"]))
            + " | "
            + cells(lambda r: pct(r["final"]["RA_worst"]))
            + " | "
            + cells(lambda r: f"{at_guidance(r['final'])['FID']:.1f}")
            + " | "
            + cells(lambda r: f"{r['gap']['forget_tv']:.2f}")
            + " | "
            + cells(lambda r: f"{r['gap']['remain_tv']:.2f}")
            + " | "
            + cells(lambda r: f"{100 * r['gap']['RA_difference']:+.0f}")
            + " | "
            + cells(lambda r: f"{r['gap']['FID_difference']:+.1f}")
            + f" | {mean(r['seconds_per_iteration'] for r in rows if r):.3f} | "
            + f"{mean(r['mask_seconds'] for r in rows if r):.1f} | "
            + memory_cell(memory)
            + " |"
        )
    lines += guidance_table(result, digits)
    lines += attack_table(result, digits)
    sweep = [r for r in result["runs"] if r.get("sweep")]
    if sweep:
        grid = result["learning_rate_grid"]
        lines += [
            "",
            f"Learning-rate sweep on digit {digits[0]}: iterations to forget (last tracked FA / RA %, guidance "
            f"{guidance}); the chosen rate in bold.",
            "",
            "| method | " + " | ".join(f"{lr:.2g}" for lr in grid) + " |",
            "|---|" + "---|" * len(grid),
        ]
        for method in sorted(dict.fromkeys(r["method"] for r in sweep), key=method_order):
            cells = []
            for lr in grid:
                row = next((r for r in sweep if r["method"] == method and r["learning_rate"] == lr), None)
                if row is None:
                    cells.append("–")
                    continue
                last = row["history"][-1]
                text = f"{row['iterations_to_forget'] or f'> {budget}'} ({pct(last['FA'])} / {pct(last['RA'])})"
                cells.append(f"**{text}**" if lr == result["best_learning_rate"][method] else text)
            lines.append(f"| {label(method)} | " + " | ".join(cells) + " |")
    return lines


def guidance_scales_of(result: dict) -> tuple[list[str], float]:
    """The final judgement's scales as stored (ascending) and the pipeline's own default."""
    first = next(iter(result["retrain"].values()))
    return list(first["per_guidance"]), first["default_guidance"]


def holds_everywhere(row: dict, base: dict) -> bool:
    return all(holds_by_guidance(row["final"], base, [row["digit"]]).values())


def guidance_table(result: dict, digits: list[int]) -> list[str]:
    """FA / RA at each guidance scale, compact: per model the highest FA and lowest RA over the digits, and on how
    many digits the rule (FA ≤ 1% with RA ≥ the base model's at that scale − 1 point) holds there."""
    scales, default = guidance_scales_of(result)
    base = result["base"]

    def cell(finals: dict[int, dict], scale: str, rule: bool) -> str:
        if not finals:
            return "–"
        metrics = {d: f["per_guidance"][scale] for d, f in finals.items()}
        text = f"{pct(max(m['FA'] for m in metrics.values()))} / {pct(min(m['RA'] for m in metrics.values()))}"
        if not rule:
            return text
        held = sum(holds_by_guidance(finals[d], base[str(d)], [d])[scale] for d in finals)
        return f"{text} · {held}/{len(finals)}"

    def line(name: str, finals: dict[int, dict], rule: bool = True) -> str:
        every = (
            f"{sum(all(holds_by_guidance(f, base[str(d)], [d]).values()) for d, f in finals.items())}/{len(finals)}"
            if rule and finals
            else "–"
        )
        return f"| {name} | " + " | ".join(cell(finals, s, rule) for s in scales) + f" | {every} |"

    heads = [f"g {float(s):g}" + (" (default)" if float(s) == default else "") for s in scales]
    lines = [
        "",
        "Per guidance scale of the final judgement (every scale on the same noise): FA / RA in %, the highest FA and "
        "the lowest RA over the digits, and on how many digits FA ≤ 1% with RA ≥ the base model's RA at that scale − "
        "1 point; *every g*: digits where that holds at every scale.",
        "",
        "| model | " + " | ".join(heads) + " | every g |",
        "|---|" + "---|" * (len(scales) + 1),
        line("base model", {d: base[str(d)] for d in digits if str(d) in base}, rule=False),
        line("**retrain**", {d: result["retrain"][str(d)] for d in digits}),
    ]
    for method, by_digit in selected_runs(result).items():
        lines.append(line(label(method), {d: r["final"] for d, r in by_digit.items()}))
    return lines


def attack_budget(records: dict[str, dict]) -> str:
    """The attacks' shared budget as the records state it."""
    first = next(iter(records.values()))
    budget, settings = first["budget"], first["judge"]["settings"]
    steps = "; ".join(
        f"{kind} {r['budget']['steps']} steps at learning rate {r['budget']['learning_rate']:.2g}"
        for kind, r in records.items()
    )
    return (
        f"{budget['images']} real images of the digit, batch {budget['batch_size']}, Adam; {steps}; seed "
        f"{first['seed']}; judged on {settings['forget_samples_per_class']} samples of the digit and "
        f"{settings['eval_samples_per_class']} per other class at guidance {settings['guidance_scale']:g}"
    )


def attack_table(result: dict, digits: list[int]) -> list[str]:
    chosen = selected_runs(result)
    retrain_attacks = result.get("retrain_attacks") or {}
    rows = [("**retrain**", {d: retrain_attacks.get(str(d)) for d in digits})]
    rows += [(label(m), {d: (by_digit.get(d) or {}).get("attacks") for d in digits}) for m, by_digit in chosen.items()]
    example = next((a for _, by_digit in rows for a in by_digit.values() if a), None)
    if example is None:
        return ["", "Attacks: not run (`--no_attacks`)."]
    kinds = list(example)
    lines = [
        "",
        f"Attacks on each final model and on retrain, the same budget for all ({attack_budget(example)}). ASR = FA "
        "after the attack, in %; *to 50%*: the first judged attack step with FA ≥ 50% (`> n`: not within the "
        "budget). Cells give the digits as above. One seed each: `benchmarks/attack_repeats.py` repeats the attacks "
        "over seeds and tells a gap to retrain from that seed's noise.",
        "",
        "| model | " + " | ".join(f"{kind} ASR | {kind} to 50%" for kind in kinds) + " |",
        "|---|" + "---|" * (2 * len(kinds)),
    ]
    for name, by_digit in rows:
        cells = []
        for kind in kinds:
            records = [(a or {}).get(kind) for a in by_digit.values()]
            cells.append(" / ".join("–" if r is None else pct(r["ASR"]) for r in records))
            cells.append(" / ".join("–" if r is None else steps_to_half(r) for r in records))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def steps_to_half(record: dict) -> str:
    steps = record["steps_to_half"]
    return f"> {record['budget']['steps']}" if steps is None else str(steps)


def render_multi(results: list[dict], args_summary: dict) -> list[str]:
    """The runs erasing several digits at once, one row per model."""
    rows = [r for r in results if r.get("multi")]
    if not rows:
        return []
    digits = rows[0]["multi"]["digits"]
    names = ", ".join(str(d) for d in digits[:-1]) + f" and {digits[-1]}"
    lines = [
        f"### Several digits at once: SFR-on erasing {names} together",
        "",
        f"One SFR-on run per model (`--concept {' '.join(DIGIT_NAMES[d] for d in digits)}`, SFR-on's chosen rate, the "
        "same budget). *Iterations to forget*: the rule on the digits' FA together (as tracked); each digit's FA and "
        f"the RA are the worst over the guidance scales, FID-digits at guidance {GAP_GUIDANCE:g}; *every g*: at every "
        "scale each digit's FA ≤ 1% with RA ≥ the base model's (erasing the same digits) − 1 point.",
        "",
        "| model | learning rate | iterations to forget | "
        + " | ".join(f"FA {d}" for d in digits)
        + f" | RA | FID-digits (g {GAP_GUIDANCE:g}) | every g |",
        "|---|---|---|" + "---|" * (len(digits) + 3),
    ]
    for result in rows:
        multi = result["multi"]
        per_guidance = multi["final"]["per_guidance"].values()
        fa = [max(m["per_class_accuracy"][str(d)] for m in per_guidance) for d in digits]
        holds = all(holds_by_guidance(multi["final"], result["base"][",".join(map(str, digits))], digits).values())
        lines.append(
            f"| {TITLES.get(result['family'], result['family'])} | {multi['learning_rate']:.2g} | "
            f"{reached_cell(multi['iterations_to_forget'], result['iterations'])} | "
            + " | ".join(pct(v) for v in fa)
            + f" | {pct(multi['final']['RA_worst'])} | {at_guidance(multi['final'])['FID']:.1f} | "
            + ("yes" if holds else "no")
            + " |"
        )
    return lines + [""]


def memory_cell(memory: dict | None) -> str:
    if memory is None:
        return "–"
    cuda = "" if memory["cuda"] is None else f" ({memory['cuda'] / 2**30:.1f} GiB GPU)"
    return f"{memory['resident'] / 2**20:.0f} MiB{cuda}"


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else math.nan


def verdict(results: list[dict], args_summary: dict) -> list[str]:
    digits = args_summary["digits"]
    lines = ["### Verdict (computed from the tables above)", ""]
    for result in results:
        budget = result["iterations"]
        chosen = selected_runs(result)
        title = TITLES.get(result["family"], result["family"])
        sfr = chosen.get("sfr_on", {})
        if sfr:
            reached = {d: r["iterations_to_forget"] for d, r in sfr.items()}
            within = [d for d, its in reached.items() if its is not None and its <= 50]
            lines.append(
                f"- **{title}: SFR-on reaches the target within 50 iterations on {len(within)} of {len(reached)} "
                f"digits** (" + ", ".join(f"{d}: {its or f'not in {budget}'}" for d, its in reached.items()) + ")."
            )
            names = " / ".join(str(d) for d in digits)
            lines.append(
                f"  - Against SFR-on, per digit ({names}; `>`: the method never reached the target within the "
                "budget, so a lower bound; `–`: SFR-on did not reach it):"
            )
            for method, by_digit in chosen.items():
                if method == "sfr_on":
                    continue
                pairs = [(sfr[d], by_digit[d]) for d in digits if d in sfr and d in by_digit]
                its = " / ".join(ratio_cell(a, b, iterations_of, budget) for a, b in pairs)
                if timed_apart(result, "sfr_on", method):
                    lines.append(f"    - {label(method)}: {its} the iterations (wall time: timed in different runs).")
                    continue
                wall = " / ".join(ratio_cell(a, b, seconds_to_forget, budget) for a, b in pairs)
                lines.append(f"    - {label(method)}: {its} the iterations, {wall} the wall time.")
            ft = chosen.get("ft", {})
            if ft and timed_apart(result, "sfr_on", "ft"):
                lines.append("  - Cost: SFR-on and FT were timed in different runs, so not compared here.")
            elif ft:
                cost = mean(r["seconds_per_iteration"] for r in sfr.values()) / mean(
                    r["seconds_per_iteration"] for r in ft.values()
                )
                share = mean(r["mask_seconds"] / (r["mask_seconds"] + r["train_seconds"]) for r in sfr.values())
                lines.append(
                    f"  - Cost: an SFR-on iteration takes {cost:.2f}× an FT iteration (forget + remain batch vs the "
                    f"remain batch alone); the saliency mask is {share:.1%} of a {budget}-iteration erasure."
                )
        else:
            lines.append(f"- **{title}**: SFR-on was not run.")
        lines += guidance_verdict(result, chosen, digits)
        lines += attack_verdict(result, chosen, digits)
        lines += closest_to_retrain(chosen)
    return lines


def timed_apart(result: dict, *methods: str) -> bool:
    """Whether the runs of `methods` come from different invocations (a supplement redid some): their seconds were
    measured under other conditions (load, machine) and are not compared."""
    invocation = {m: i + 1 for i, sup in enumerate(result.get("supplements", [])) for m in sup["methods"]}
    return len({invocation.get(m, 0) for m in methods}) > 1


def guidance_verdict(result: dict, chosen: dict[str, dict[int, dict]], digits: list[int]) -> list[str]:
    """Does FA ≤ 1% with RA ≥ base − 1 point hold at every guidance scale of the final judgement?"""
    scales, default = guidance_scales_of(result)
    base = result["base"]
    shown = ", ".join(f"{float(s):g}" for s in scales)

    def count(by_digit: dict[int, dict]) -> str:
        return f"{sum(holds_everywhere(r, base[str(r['digit'])]) for r in by_digit.values())} of {len(by_digit)}"

    lines = [
        f"  - At every guidance scale ({shown}; the pipeline's default {default:g}), FA ≤ 1% with RA ≥ the base "
        "model's − 1 point, on how many digits:"
    ]
    sfr = chosen.get("sfr_on", {})
    if sfr:
        failures = []
        for digit, row in sfr.items():
            holds = holds_by_guidance(row["final"], base[str(digit)], [digit])
            failed = [s for s, ok in holds.items() if not ok]
            if failed:
                worst = ", ".join(
                    f"g {float(s):g}: FA {pct(row['final']['per_guidance'][s]['FA'])}, RA "
                    f"{pct(row['final']['per_guidance'][s]['RA'])} vs base "
                    f"{pct(base[str(digit)]['per_guidance'][s]['RA'])}"
                    for s in failed
                )
                failures.append(f"digit {digit} ({worst})")
        detail = f"; not on {'; '.join(failures)}" if failures else ""
        lines.append(f"    - SFR-on: {count(sfr)}{detail}.")
    others = [f"{label(m)} {count(by_digit)}" for m, by_digit in chosen.items() if m != "sfr_on"]
    if others:
        lines.append(f"    - The others: {', '.join(others)}.")
    multi = result.get("multi")
    if multi:
        target = multi["digits"]
        holds = holds_by_guidance(multi["final"], base[",".join(map(str, target))], target)
        failed = [f"{float(s):g}" for s, ok in holds.items() if not ok]
        lines.append(
            f"    - SFR-on erasing {', '.join(map(str, target))} together: "
            + (f"not at guidance {', '.join(failed)}" if failed else "holds at every scale")
            + f" (iterations to forget: {reached_cell(multi['iterations_to_forget'], result['iterations'])})."
        )
    return lines


def attack_verdict(result: dict, chosen: dict[str, dict[int, dict]], digits: list[int]) -> list[str]:
    """Per attack: is SFR-on's ASR ≤ retrain's + 5 points, and lower than every baseline's, digit by digit?"""
    sfr = {d: r["attacks"] for d, r in chosen.get("sfr_on", {}).items() if "attacks" in r}
    retrain_attacks = result.get("retrain_attacks") or {}
    if not sfr:
        return ["  - Attacks: none on SFR-on (`--no_attacks`, or SFR-on not run)."]
    baselines = [m for m in chosen if m in BASELINES]
    lines = [
        f"  - Attacks, per digit: SFR-on's ASR against retrain's + {100 * ASR_MARGIN:.0f} points and against every "
        f"baseline's ({', '.join(label(m) for m in baselines) or 'none run'}):"
    ]
    for kind in next(iter(sfr.values())):
        asr = {d: a[kind]["ASR"] for d, a in sfr.items()}
        against = [d for d in digits if d in asr and str(d) in retrain_attacks]
        near = [d for d in against if asr[d] <= retrain_attacks[str(d)][kind]["ASR"] + ASR_MARGIN + 1e-9]
        text = (
            f"    - {kind}: SFR-on {' / '.join(pct(asr[d]) for d in against)}, retrain "
            f"{' / '.join(pct(retrain_attacks[str(d)][kind]['ASR']) for d in against)}: within retrain's + "
            f"{100 * ASR_MARGIN:.0f} points on {len(near)} of {len(against)} digits"
        )
        if baselines:
            compared = [d for d in digits if d in asr and all("attacks" in chosen[m].get(d, {}) for m in baselines)]
            not_lower = {m: [d for d in compared if asr[d] >= chosen[m][d]["attacks"][kind]["ASR"]] for m in baselines}
            lower = [d for d in compared if not any(d in ds for ds in not_lower.values())]
            text += f"; lower than every baseline's on {len(lower)} of {len(compared)}"
            misses = [f"{label(m)} on {', '.join(map(str, ds))}" for m, ds in not_lower.items() if ds]
            if misses:
                text += f" (not lower than {'; '.join(misses)})"
        lines.append(text + ".")
    return lines


def closest_to_retrain(chosen: dict[str, dict[int, dict]]) -> list[str]:
    """Rank by the summed label gaps, over the methods that forgot every digit (FA ≤ 1% at every guidance) and over
    all."""

    def gap(method: str) -> float:
        return mean(r["gap"]["forget_tv"] + r["gap"]["remain_tv"] for r in chosen[method].values())

    def ranking(methods) -> str:
        ranked = sorted(methods, key=gap)[:3]
        return ", ".join(f"{label(m)} {gap(m):.2f}" for m in ranked) if ranked else "none"

    forgot = [
        m for m, by_digit in chosen.items() if all(r["final"]["FA_worst"] <= FA_TARGET for r in by_digit.values())
    ]
    return [
        f"  - Closest to retrain (gap forgotten + gap others at guidance {GAP_GUIDANCE:g}, mean over digits; 0 = "
        "retrain's judged labels): among the methods that forgot every digit (FA ≤ 1% at every guidance), "
        f"{ranking(forgot)}; among all, {ranking(chosen)}."
    ]


def plot_family(result: dict, digits: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = selected_runs(result)
    fig, axes = plt.subplots(len(digits), 2, figsize=(10, 2.8 * len(digits)), dpi=110, squeeze=False)
    for i, digit in enumerate(digits):
        for j, metric in enumerate(("FA", "RA")):
            ax = axes[i][j]
            for method, by_digit in chosen.items():
                row = by_digit.get(digit)
                if row is None:
                    continue
                style = "-" if method in SWEPT_METHODS else ":"
                steps = [h["step"] for h in row["history"]]
                ax.plot(steps, [100 * h[metric] for h in row["history"]], style, marker=".", label=label(method))
            # Tracking samples at the gap's guidance: retrain's line at the same one.
            retrain_value = at_guidance(result["retrain"][str(digit)])[metric]
            ax.axhline(100 * retrain_value, color="black", ls="--", lw=1, label="retrain")
            ax.set_title(f"{metric}, erasing {digit} ({DIGIT_NAMES[digit]})", fontsize=9)
            ax.set_xlabel("iteration", fontsize=8)
            ax.set_ylabel("%", fontsize=8)
            ax.set_ylim(-3, 103)
            if metric == "FA":
                ax.axhline(100 * FA_TARGET, color="grey", ls="-", lw=0.5)
    axes[0][1].legend(fontsize=7, ncol=2, loc="lower left")
    fig.suptitle(f"Digits {TITLES.get(result['family'], result['family'])}: FA and RA against iteration", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def render(payload: dict, output: Path, plots_dir: Path, own_section: bool = False) -> None:
    """The comparison's BENCHMARKS.md section; with `own_section`, a section of its own for these models (whose
    settings differ from the main comparison's)."""
    args_summary, results = payload["settings"], payload["results"]
    marker, heading = "methods-comparison", "## SFR-on against the baselines and retrain"
    if own_section:
        marker += "-" + "-".join(r["family"] for r in results)
        heading += ": " + ", ".join(TITLES.get(r["family"], r["family"]) for r in results) + ", settings of its own"
    budgets = ", ".join(f"{TITLES.get(r['family'], r['family'])}: {r['iterations']} iterations" for r in results)
    scales = ", ".join(f"{s:g}" for s in args_summary["guidance_scales"])
    digits = args_summary["digits"]
    lines = [
        f"<!-- {marker}:start -->",
        heading,
        "",
        "- Commands: "
        + "; ".join(f"`{c}`" for c in payload["command"].split("; "))
        + f" ({payload['minutes']:.0f} minutes of runs, retraining included, in the invocations that finished "
        "them: with `--resume`, runs saved by an interrupted invocation are reused and their time is not counted; "
        "each model's time is in its heading)",
        f"- Date: {payload['date']}; commits (in the order of the commands): {payload['commit']}; machine: "
        f"{payload['machine']}",
        f"- Digits {', '.join(map(str, digits))}: the learning rates were swept on {digits[0]}.{digits_note(digits)}",
        f"- Every method of a model gets the same budget ({budgets}) at batch 64 forget + 64 remain "
        "(FT: the remain batch only; GA and ESD: the forget batch only; RL, SalUn and R: both in one joint step), "
        f"FA/RA tracked every {args_summary['eval_every']} iterations (guidance {GAP_GUIDANCE:g}, fresh noise each "
        f"time) on {args_summary['track_forget_samples']} samples of the digit and {args_summary['track_samples']} "
        "per other class.",
        f"- *Final judgement* of every final model (and of the base model, for reference): guidance {scales} and the "
        f"pipeline's own default, on {args_summary['final_forget_samples']} samples of the digit and "
        f"{args_summary['final_samples']} per other class, 20 DDIM steps, seed 0 (the same noise at every scale). "
        "The tables' FA and RA are the worst over the scales; FID-digits and the gap to retrain are at guidance "
        f"{GAP_GUIDANCE:g}.",
        "- *Iterations to forget*: the first tracked iteration from which FA ≤ 1% with RA ≥ base − 1 point holds "
        "at every later evaluation, each on fresh noise (`> budget`: not within it). Rows show each method at the "
        "learning rate its sweep chose (grid: the family's SFR-on default × "
        + ", ".join(f"{f:.3g}" for f in args_summary["lr_factors"])
        + "); the ablations use SFR-on's. Baselines keep their published settings otherwise: SalUn keeps 50% of the "
        "weights, ESD η = 1, GA and RL weight 1.",
        "- *Attacks* (`sfr_diffusion.attacks`): conditioning inversion (every weight frozen, the digit's condition "
        "embedding optimised), relearning (fine-tuning on real images of the digit) and relearning after resetting "
        "the digit's class embedding, on each final model at its chosen rate and on retrain, one budget and seed for "
        "all; ASR = FA after the attack. "
        + (
            "Not run (`--no_attacks`)."
            if args_summary.get("attack") is None
            else "Learning-rate sweep rows are not attacked."
        ),
        f"- *Retrain*: the bundled recipe ({args_summary['retrain_steps']} steps) without the digit's images "
        "(and, for SD, its captions); VAE and text encoder shared. *Peak memory*: peak resident memory of a fresh "
        f"process running a {args_summary['memory_iterations']}-iteration erasure without evaluation; at this size "
        "it is mostly Python, torch and the data, so differences between methods are small.",
        "",
    ]
    for result in results:
        lines += render_family(result, args_summary)
        plot = plots_dir / f"methods_digits_{result['family']}.png"
        plot_family(result, digits, plot)
        try:
            shown = plot.resolve().relative_to(output.resolve().parent).as_posix()
        except ValueError:
            shown = plot.as_posix()
        lines += ["", f"![FA and RA against iteration, one line per method]({shown})", ""]
    lines += render_multi(results, args_summary)
    lines += verdict(results, args_summary)
    lines.append(f"<!-- {marker}:end -->")
    write_section(output, "\n".join(lines) + "\n")


def differing_settings(first: dict, other: dict) -> set[str]:
    """The settings two runs' payloads differ in, the budget aside."""
    return {k for k in first["settings"] if k != "iterations" and first["settings"][k] != other["settings"].get(k)}


def settings_groups(payloads: list[dict]) -> list[list[dict]]:
    """The payloads in groups that :func:`merge` can merge, in the order each group's first payload came."""
    groups: list[list[dict]] = []
    for payload in payloads:
        group = next((g for g in groups if not differing_settings(g[0], payload)), None)
        if group is None:
            groups.append([payload])
        else:
            group.append(payload)
    return groups


def merge(payloads: list[dict]) -> dict:
    """One report from several runs: models run side by side, or a later run that redoes some methods of a model
    (its runs of those methods replace the earlier ones). The settings must agree, except for the budget."""
    first, by_model, machines = payloads[0], {}, {}
    for payload in payloads:
        differs = differing_settings(first, payload)
        if differs:
            raise ValueError(f"Cannot merge results whose settings differ in {sorted(differs)}.")
        for result in payload["results"]:
            base = by_model.get(result["model"])
            if base is None:
                by_model[result["model"]], machines[result["model"]] = result, payload["machine"]
            else:
                other = payload["machine"] if payload["machine"] != machines[result["model"]] else None
                by_model[result["model"]] = supplemented(base, result, payload["command"], other)
    return first | {
        "command": "; ".join(p["command"] for p in payloads),
        "commit": "; ".join(dict.fromkeys(p["commit"] for p in payloads)),
        "machine": " / ".join(dict.fromkeys(p["machine"] for p in payloads)),
        "minutes": sum(p["minutes"] for p in payloads),
        "results": list(by_model.values()),
    }


def supplemented(base: dict, extra: dict, command: str, other_machine: str | None) -> dict:
    if base["iterations"] != extra["iterations"] or base["learning_rate_grid"] != extra["learning_rate_grid"]:
        raise ValueError(f"The runs of {base['model']} to merge differ in budget or learning-rate grid.")
    methods = sorted({r["method"] for r in extra["runs"]}, key=method_order)
    return base | {
        "runs": [r for r in base["runs"] if r["method"] not in methods] + extra["runs"],
        "best_learning_rate": base["best_learning_rate"] | extra["best_learning_rate"],
        "peak_memory_bytes": base["peak_memory_bytes"] | extra["peak_memory_bytes"],
        "multi": extra.get("multi") or base.get("multi"),
        "minutes": base["minutes"] + extra["minutes"],
        "supplements": base.get("supplements", [])
        + [{"methods": methods, "command": command, "other_machine": other_machine}],
    }


def method_order(method: str) -> int:
    order = list(SWEPT_METHODS) + list(ABLATIONS)
    return order.index(method) if method in order else len(order)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.render_only:
        # Runs with other settings (digits, retrain steps...) than the first JSON's get a section of their own.
        groups = settings_groups([json.loads(path.read_text()) for path in args.render_only])
        payloads = [merge(group) for group in groups]
        for index, payload in enumerate(payloads):
            render(payload, args.output, args.plots_dir, own_section=index > 0)
        return payloads[0]
    settings = run_settings(args)
    partial = args.results_json.with_name(args.results_json.stem + ".partial.json")
    args.finished = FinishedRuns(partial, settings, args.resume)
    commit, start = git_commit(ROOT), time.perf_counter()  # the code that runs, even if the checkout changes meanwhile
    with tempfile.TemporaryDirectory() as tmp:
        results = [benchmark_model(args, model, Path(tmp)) for model in args.models]
    payload = {
        "command": ("python benchmarks/benchmark.py " + " ".join(sys.argv[1:] if argv is None else argv)).strip(),
        "date": datetime.date.today().isoformat(),
        "commit": commit,
        "machine": machine_description(),
        "minutes": (time.perf_counter() - start) / 60,
        "settings": settings,
        "results": results,
    }
    args.results_json.parent.mkdir(parents=True, exist_ok=True)
    args.results_json.write_text(json.dumps(payload, indent=1, default=str))
    partial.unlink(missing_ok=True)
    render(payload, args.output, args.plots_dir)
    return payload


if __name__ == "__main__":
    main()
