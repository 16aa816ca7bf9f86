"""SFR-on against the baselines and retrain on the digits world: methods × families × forget targets, one run.

    python benchmarks/benchmark.py                      # the full run: DDPM, DiT and SD digits; digits 3, 0 and 1
    python benchmarks/benchmark.py --models digits-ddpm --digits 3 7
    python benchmarks/benchmark.py --quick              # a smoke run of every code path, into a temp folder
    python benchmarks/benchmark.py --resume             # after an interruption: reuse the finished runs
    python benchmarks/benchmark.py --methods sfr_on --ablations --forget_loss remap   # + erase-command options

For each model and forget digit every method gets the same iteration budget (``--iterations``) through the erase
command (``sfr_diffusion.commands.erase``, what ``scripts/erase_concept.py`` runs; options this script does not know
are passed on to it), with FA/RA tracked every ``--eval_every`` iterations on ``--track_samples`` samples per class.
Learning rates: on the first digit, each method (SFR-on and the baselines) runs the same grid, the model's SFR-on
default × ``--lr_factors``, and keeps the rate that forgets soonest (FA ≤ 1% with RA ≥ base − 1 point; ties and
misses: lower final FA, then higher final RA); the other digits and SFR-on's ablations R, R+on and F+R+on use that
rate. Every final model is judged on ``--final_samples`` samples per class and compared with *retrain*, the bundled
recipe trained without the digit (cached; `sfr_diffusion.digits.retrain`): the total-variation distance between the
judge's label distributions for the forgotten digit and, averaged, for the other digits, plus the RA and FID-digits
differences. A short extra run per method, in a fresh process, measures peak memory. Tables, plots and the verdict
go into BENCHMARKS.md.
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
from pathlib import Path

from reporting import FA_TARGET, git_commit, iterations_to_forget, machine_description, write_section

from sfr_diffusion import load_pipeline
from sfr_diffusion.commands import erase as erase_command
from sfr_diffusion.digits import BUNDLED_ALIASES, DIGIT_NAMES
from sfr_diffusion.digits.metrics import digits_world_metrics
from sfr_diffusion.digits.retrain import retrain
from sfr_diffusion.families import family_for

ROOT = Path(__file__).resolve().parent.parent
SWEPT_METHODS = ("sfr_on", "ft", "ga", "rl", "salun", "esd")
# SFR-on's ablations (SPEC §1, the paper's Table 5): R = ascent + remain in one joint step; +on = the online
# fast-slow pair; +F = the adaptive forget weights (temperature λ); SFR-on adds the saliency mask S.
ABLATIONS = {
    "R": ["--method", "sfr_on", "--no_online", "--no_mask", "--temperature", "0"],
    "R+on": ["--method", "sfr_on", "--no_mask", "--temperature", "0"],
    "F+R+on": ["--method", "sfr_on", "--no_mask"],
}
LABELS = {"sfr_on": "SFR-on", "ft": "FT", "ga": "GA", "rl": "RL", "salun": "SalUn", "esd": "ESD"}
TITLES = {"ddpm": "DDPM", "dit": "DiT", "sd": "SD (text-to-image)"}
QUICK = dict(
    models=["digits-ddpm"], digits=[3], methods=["sfr_on", "ft"], ablations=["R"], iterations=4, eval_every=2,
    track_samples=2, final_samples=4, lr_factors=[1.0, 3.0], retrain_steps=20, memory_iterations=2,
)  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(BUNDLED_ALIASES), choices=sorted(BUNDLED_ALIASES))
    parser.add_argument("--digits", type=int, nargs="+", default=[3, 0, 1], help="The first one is the sweep's.")
    parser.add_argument("--methods", nargs="+", default=list(SWEPT_METHODS), choices=SWEPT_METHODS)
    parser.add_argument("--ablations", nargs="*", default=list(ABLATIONS), choices=sorted(ABLATIONS))
    parser.add_argument("--iterations", type=int, default=100, help="The budget, the same for every method.")
    parser.add_argument("--eval_every", type=int, default=10)
    parser.add_argument("--track_samples", type=int, default=20, help="Samples per class when tracking FA/RA.")
    parser.add_argument("--final_samples", type=int, default=50, help="Samples per class for the final judgement.")
    parser.add_argument("--lr_factors", type=float, nargs="+", default=[1 / 3, 1.0, 3.0])
    parser.add_argument("--retrain_steps", type=int, default=3000, help="The bundled recipe's steps.")
    parser.add_argument("--memory_iterations", type=int, default=3, help="Iterations of the peak-memory run.")
    parser.add_argument("--output", type=Path, default=None, help="Default: BENCHMARKS.md (--quick: a temp folder).")
    parser.add_argument("--plots_dir", type=Path, default=None, help="Default: docs/ (--quick: next to --output).")
    parser.add_argument("--results_json", type=Path, default=None, help="Default: <plots_dir>/benchmark_methods.json")
    parser.add_argument("--quick", action="store_true", help=f"Smoke-run settings: {QUICK}.")
    parser.add_argument("--resume", action="store_true", help="Reuse the finished runs of an interrupted benchmark.")
    parser.add_argument(
        "--render_only", type=Path, nargs="+", default=None,
        help="Rewrite tables and plots from results JSONs (several: runs of different models, merged).",
    )  # fmt: skip
    args, erase_args = parser.parse_known_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
        # A smoke run never touches the repository's BENCHMARKS.md or docs/.
        args.output = args.output or Path(tempfile.mkdtemp(prefix="sfr-benchmark-quick-")) / "BENCHMARKS.md"
    args.output = args.output or ROOT / "BENCHMARKS.md"
    args.plots_dir = args.plots_dir or (args.output.parent if args.quick else ROOT / "docs")
    bad = [d for d in args.digits if d not in range(len(DIGIT_NAMES))]
    if bad:
        parser.error(f"--digits must be 0..9, got {bad}.")
    if not args.methods:
        parser.error("--methods must name at least one method.")
    if args.iterations < 1 or args.eval_every < 1 or args.eval_every > args.iterations:
        parser.error("Need --iterations >= 1 and 1 <= --eval_every <= --iterations.")
    args.erase_args = erase_args
    args.results_json = args.results_json or args.plots_dir / "benchmark_methods.json"
    return args


def erase_argv(args, model: str, digit: int, method_args: list[str], output_dir: Path, **overrides) -> list[str]:
    settings = {
        "max_train_steps": args.iterations,
        "eval_every": args.eval_every,
        "eval_samples_per_class": args.track_samples,
        **overrides,
    }
    argv = ["--pretrained_model_name_or_path", model, "--concept", DIGIT_NAMES[digit], "--output_dir", str(output_dir)]
    for key, value in settings.items():
        argv += [f"--{key}"] if value is True else [f"--{key}", str(value)]
    return argv + method_args + args.erase_args


def judged(path, digit: int, samples: int) -> dict:
    """The final judgement of a model: FA, RA, FID-digits and the judge's label distribution per class (keyed by the
    class as a string, as it reads back from the results JSON)."""
    metrics = digits_world_metrics(load_pipeline(path), [digit], samples_per_class=samples)
    keys = ("FA", "FA_paraphrases", "RA", "FID", "label_distribution")
    return json.loads(json.dumps({k: metrics[k] for k in keys if k in metrics}))


def total_variation(p: list[float], q: list[float]) -> float:
    return 0.5 * sum(abs(a - b) for a, b in zip(p, q, strict=True))


def gap_to_retrain(final: dict, retrained: dict, digit: int) -> dict:
    """How far an erased model's final judgement is from retrain's (0 = indistinguishable by these measures)."""
    erased_labels, retrain_labels = final["label_distribution"], retrained["label_distribution"]
    others = [c for c in retrain_labels if int(c) != digit]
    return {
        "forget_tv": total_variation(erased_labels[str(digit)], retrain_labels[str(digit)]),
        "remain_tv": sum(total_variation(erased_labels[c], retrain_labels[c]) for c in others) / len(others),
        "RA_difference": final["RA"] - retrained["RA"],
        "FID_difference": final["FID"] - retrained["FID"],
    }


class FinishedRuns:
    """Every finished run, saved to ``<results_json stem>.partial.json`` as it ends: an interrupted benchmark loses
    only the run in progress, and ``--resume`` reuses the saved runs (same settings; keyed by model, method, digit
    and learning rate)."""

    def __init__(self, path: Path, settings: dict, resume: bool):
        self.path, self.settings, self.runs = path, settings, {}
        if resume and path.exists():
            saved = json.loads(path.read_text())
            if saved["settings"] == settings:
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


def run_one(args, model: str, digit: int, label: str, method_args: list[str], lr: float, tmp: Path) -> dict:
    key = f"{model}|{label}|{digit}|{lr!r}"
    return args.finished.get_or_run(key, lambda: erase_and_judge(args, model, digit, label, method_args, lr, tmp))


def erase_and_judge(args, model: str, digit: int, label: str, method_args: list[str], lr: float, tmp: Path) -> dict:
    """One erasure through the erase command (a method is a list of its options), its export judged, then removed."""
    output_dir = tmp / f"{label}-{digit}-{lr:g}"
    result = erase_command.main(erase_argv(args, model, digit, method_args, output_dir, learning_rate=lr))
    history = result.history
    final = judged(output_dir, digit, args.final_samples)
    shutil.rmtree(output_dir)
    return {
        "method": label,
        "digit": digit,
        "learning_rate": lr,
        "iterations_to_forget": iterations_to_forget(history, history[0]["RA"]),
        "history": [{k: h[k] for k in ("step", "FA", "RA")} for h in history],
        "final": final,
        "seconds_per_iteration": result.seconds["train"] / result.steps,
        "mask_seconds": result.seconds["mask"],
        "train_seconds": result.seconds["train"],
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
    argv = erase_argv(args, model, digit, method_args, output_dir, learning_rate=lr, **short)
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, *argv], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"The memory run of {method_args} failed:\n{done.stderr[-3000:]}")
    shutil.rmtree(output_dir, ignore_errors=True)
    resident, cuda = done.stdout.strip().splitlines()[-1].split()[1:]
    return {"resident": int(resident), "cuda": None if cuda == "None" else int(cuda)}


def benchmark_model(args, model: str, tmp: Path) -> dict:
    family = family_for(load_pipeline(model))
    base_lr = family.default_learning_rate
    grid = [base_lr * f for f in args.lr_factors]
    sweep_digit, runs, best_lr, retrained, memory = args.digits[0], [], {}, {}, {}
    start = time.perf_counter()
    for digit in args.digits:
        path = retrain(family.name, digit, steps=args.retrain_steps)
        retrained[digit] = judged(path, digit, args.final_samples)
    for method in args.methods:
        method_args = ["--method", method]
        sweep = [run_one(args, model, sweep_digit, method, method_args, lr, tmp) for lr in grid]
        for row in sweep:
            row["sweep"] = True
        runs += sweep
        best_lr[method] = min(sweep, key=sweep_key)["learning_rate"]
        for digit in args.digits[1:]:
            runs.append(run_one(args, model, digit, method, method_args, best_lr[method], tmp))
        memory[method] = peak_memory(args, model, sweep_digit, method_args, best_lr[method], tmp)
    ablation_lr = best_lr.get("sfr_on", base_lr)
    for name in args.ablations:
        for digit in args.digits:
            runs.append(run_one(args, model, digit, name, ABLATIONS[name], ablation_lr, tmp))
        memory[name] = peak_memory(args, model, sweep_digit, ABLATIONS[name], ablation_lr, tmp)
    for row in runs:
        row["gap"] = gap_to_retrain(row["final"], retrained[row["digit"]], row["digit"])
    return {
        "model": model,
        "family": family.name,
        "iterations": args.iterations,
        "learning_rate_grid": grid,
        "best_learning_rate": best_lr | {name: ablation_lr for name in args.ablations},
        "retrain": {str(d): m for d, m in retrained.items()},
        "peak_memory_bytes": memory,
        "runs": runs,
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


def pct(value) -> str:
    return "–" if value is None else f"{100 * value:.0f}"


def render_family(result: dict, args_summary: dict) -> list[str]:
    chosen = selected_runs(result)
    digits = args_summary["digits"]
    budget = result["iterations"]
    title = TITLES.get(result["family"], result["family"])
    names = " / ".join(f"{d} ({DIGIT_NAMES[d]})" for d in digits)
    lines = [
        f"### {title}: `{result['model']}` ({result['minutes']:.0f} minutes)",
        "",
        f"Cells give digit {names}. FA, RA in %; *gap* = total-variation distance to retrain's judged labels "
        "(forgotten digit / mean of the others; 0 = the same, 1 = disjoint); ΔRA, ΔFID = erased − retrain.",
        *(
            f"Rows of {', '.join(label(m) for m in sup['methods'])}: from a later run on the same machine and "
            f"settings, `{sup['command']}`."
            for sup in result.get("supplements", [])
        ),
        "",
        "| method | learning rate | iterations to forget | FA | RA | FID-digits | gap forgotten | gap others "
        "| ΔRA | ΔFID | s / iteration | mask s | peak memory |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    retrain = result["retrain"]
    lines.append(
        "| **retrain** | – | – | "
        + " / ".join(pct(retrain[str(d)]["FA"]) for d in digits)
        + " | "
        + " / ".join(pct(retrain[str(d)]["RA"]) for d in digits)
        + " | "
        + " / ".join(f"{retrain[str(d)]['FID']:.1f}" for d in digits)
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
            + cells(lambda r: pct(r["final"]["FA"]))
            + " | "
            + cells(lambda r: pct(r["final"]["RA"]))
            + " | "
            + cells(lambda r: f"{r['final']['FID']:.1f}")
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
    sweep = [r for r in result["runs"] if r.get("sweep")]
    if sweep:
        grid = result["learning_rate_grid"]
        lines += [
            "",
            f"Learning-rate sweep on digit {digits[0]}: iterations to forget (final FA / RA %); the chosen rate in "
            "bold.",
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
                wall = " / ".join(ratio_cell(a, b, seconds_to_forget, budget) for a, b in pairs)
                lines.append(f"    - {label(method)}: {its} the iterations, {wall} the wall time.")
            ft = chosen.get("ft", {})
            if ft:
                cost = mean(r["seconds_per_iteration"] for r in sfr.values()) / mean(
                    r["seconds_per_iteration"] for r in ft.values()
                )
                share = mean(r["mask_seconds"] / (r["mask_seconds"] + r["train_seconds"]) for r in sfr.values())
                lines.append(
                    f"  - Cost: an SFR-on iteration takes {cost:.2f}× an FT iteration (forget + remain batch vs the "
                    f"remain batch alone); the saliency mask is {share:.1%} of a {budget}-iteration erasure."
                )
        lines += closest_to_retrain(chosen)
    return lines


def closest_to_retrain(chosen: dict[str, dict[int, dict]]) -> list[str]:
    """Rank by the summed label gaps, over the methods that forgot every digit (final FA ≤ 1%) and over all."""

    def gap(method: str) -> float:
        return mean(r["gap"]["forget_tv"] + r["gap"]["remain_tv"] for r in chosen[method].values())

    def ranking(methods) -> str:
        ranked = sorted(methods, key=gap)[:3]
        return ", ".join(f"{label(m)} {gap(m):.2f}" for m in ranked) if ranked else "none"

    forgot = [m for m, by_digit in chosen.items() if all(r["final"]["FA"] <= FA_TARGET for r in by_digit.values())]
    return [
        "  - Closest to retrain (gap forgotten + gap others, mean over digits; 0 = retrain's judged labels): among "
        f"the methods that forgot every digit, {ranking(forgot)}; among all, {ranking(chosen)}."
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
            retrain_value = result["retrain"][str(digit)][metric]
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


def render(payload: dict, output: Path, plots_dir: Path) -> None:
    args_summary, results = payload["settings"], payload["results"]
    budgets = ", ".join(f"{TITLES.get(r['family'], r['family'])}: {r['iterations']} iterations" for r in results)
    lines = [
        "<!-- methods-comparison:start -->",
        "## SFR-on against the baselines and retrain",
        "",
        "- Commands: "
        + "; ".join(f"`{c}`" for c in payload["command"].split("; "))
        + f" ({payload['minutes']:.0f} minutes of runs in all, retraining included; each model's time is in its "
        "heading)",
        f"- Date: {payload['date']}; commits (in the order of the commands): {payload['commit']}; machine: "
        f"{payload['machine']}",
        f"- Every method of a model gets the same budget ({budgets}) at batch 64 forget + 64 remain "
        "(FT: the remain batch only; GA and ESD: the forget batch only; RL, SalUn and R: both in one joint step), "
        f"FA/RA tracked every {args_summary['eval_every']} iterations on {args_summary['track_samples']} samples per "
        f"class; the final model judged on {args_summary['final_samples']} samples per class (guidance 2, 20 DDIM "
        "steps, seed 0).",
        "- *Iterations to forget*: the first tracked iteration with FA ≤ 1% and RA ≥ base − 1 point "
        "(`> budget`: not within it). Rows show each method at the learning rate its "
        "sweep chose (grid: the family's SFR-on default × "
        + ", ".join(f"{f:.3g}" for f in args_summary["lr_factors"])
        + "); the ablations use SFR-on's. Baselines keep their published settings otherwise: SalUn keeps 50% of the "
        "weights, ESD η = 1, GA and RL weight 1.",
        f"- *Retrain*: the bundled recipe ({args_summary['retrain_steps']} steps) without the digit's images "
        "(and, for SD, its captions); VAE and text encoder shared. *Peak memory*: peak resident memory of a fresh "
        f"process running a {args_summary['memory_iterations']}-iteration erasure without evaluation; at this size "
        "it is mostly Python, torch and the data, so differences between methods are small.",
        "",
    ]
    for result in results:
        lines += render_family(result, args_summary)
        plot = plots_dir / f"methods_digits_{result['family']}.png"
        plot_family(result, args_summary["digits"], plot)
        try:
            shown = plot.resolve().relative_to(output.resolve().parent).as_posix()
        except ValueError:
            shown = plot.as_posix()
        lines += ["", f"![FA and RA against iteration, one line per method]({shown})", ""]
    lines += verdict(results, args_summary)
    lines.append("<!-- methods-comparison:end -->")
    write_section(output, "\n".join(lines) + "\n")


def merge(payloads: list[dict]) -> dict:
    """One report from several runs: models run side by side, or a later run that redoes some methods of a model
    (its runs of those methods replace the earlier ones). The settings must agree, except for the budget."""
    first, by_model = payloads[0], {}
    for payload in payloads:
        settings = payload["settings"]
        differs = {k for k in first["settings"] if k != "iterations" and first["settings"][k] != settings[k]}
        if differs:
            raise ValueError(f"Cannot merge results whose settings differ in {sorted(differs)}.")
        for result in payload["results"]:
            base = by_model.get(result["model"])
            by_model[result["model"]] = result if base is None else supplemented(base, result, payload["command"])
    return first | {
        "command": "; ".join(p["command"] for p in payloads),
        "commit": "; ".join(dict.fromkeys(p["commit"] for p in payloads)),
        "machine": " / ".join(dict.fromkeys(p["machine"] for p in payloads)),
        "minutes": sum(p["minutes"] for p in payloads),
        "results": list(by_model.values()),
    }


def supplemented(base: dict, extra: dict, command: str) -> dict:
    if base["iterations"] != extra["iterations"] or base["learning_rate_grid"] != extra["learning_rate_grid"]:
        raise ValueError(f"The runs of {base['model']} to merge differ in budget or learning-rate grid.")
    methods = sorted({r["method"] for r in extra["runs"]}, key=method_order)
    return base | {
        "runs": [r for r in base["runs"] if r["method"] not in methods] + extra["runs"],
        "best_learning_rate": base["best_learning_rate"] | extra["best_learning_rate"],
        "peak_memory_bytes": base["peak_memory_bytes"] | extra["peak_memory_bytes"],
        "minutes": base["minutes"] + extra["minutes"],
        "supplements": base.get("supplements", []) + [{"methods": methods, "command": command}],
    }


def method_order(method: str) -> int:
    order = list(SWEPT_METHODS) + list(ABLATIONS)
    return order.index(method) if method in order else len(order)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.render_only:
        payload = merge([json.loads(path.read_text()) for path in args.render_only])
        render(payload, args.output, args.plots_dir)
        return payload
    settings = {
        key: getattr(args, key)
        for key in "digits iterations eval_every track_samples final_samples lr_factors retrain_steps".split()
        + ["memory_iterations", "erase_args"]
    }
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
