"""SFR-on alone, one run per digit, on a digits-world model; writes its section of BENCHMARKS.md.

    python benchmarks/benchmark_sfr_on.py               # all ten digits (about 15 minutes on 2 cores)
    python benchmarks/benchmark_sfr_on.py --model digits-sd
    python benchmarks/benchmark_sfr_on.py --digits 3 7 --quick

(``benchmarks/benchmark.py`` compares SFR-on with the baselines and retrain.)

For every digit it runs the erase command (``sfr_diffusion.commands.erase``, what ``scripts/erase_concept.py`` runs)
with its defaults, plus FA/RA tracking every ``--eval_every`` iterations and any option this script does not know
(e.g. ``--max_train_steps 100``), then records FA, RA and FID-digits before and after, the first tracked iteration from
which FA ≤ 1% with RA ≥ base − 1 point holds at every later evaluation, and the wall time of the mask and of the
erasure (evaluation excluded). It plots FA and RA against iteration for ``--plot_digit`` and replaces the marked
section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path

from reporting import FA_TARGET, RA_TOLERANCE, git_commit, iterations_to_forget, machine_description, write_section

from sfr_diffusion import EvaluationArguments, load_pipeline
from sfr_diffusion.attacks import AttackArguments, run_attacks
from sfr_diffusion.commands import erase as erase_command
from sfr_diffusion.digits import DIGIT_NAMES
from sfr_diffusion.digits.metrics import guidance_sweep
from sfr_diffusion.forgetting import forgotten_at_every_guidance

ROOT = Path(__file__).resolve().parent.parent
TITLES = {"ddpm": "DDPM", "dit": "DiT", "sd": "SD (text-to-image)", "sd3": "SD3 (flow-matching text-to-image)"}


def plot_curve(history: list[dict], digit_name: str, base_ra: float, path: Path, family: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    ax.plot(steps, [100 * h["FA"] for h in history], "o-", label=f"FA (samples of '{digit_name}' judged as it)")
    ax.plot(steps, [100 * h["RA"] for h in history], "s-", label="RA (other digits judged correctly)")
    ax.axhline(100 * (base_ra - RA_TOLERANCE), color="grey", ls=":", lw=1, label="base RA − 1 point")
    ax.axhline(100 * FA_TARGET, color="grey", ls="--", lw=1, label="FA = 1%")
    ax.set_xlabel("SFR-on iteration")
    ax.set_ylabel("%")
    ax.set_ylim(-3, 103)
    ax.set_title(f"SFR-on erasing '{digit_name}' from the digits {TITLES.get(family, family)}")
    ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


GUIDANCE_SCALES = (1.0, 2.0, 4.0, 7.5)  # and each pipeline's own default


def final_judgement(args, pipeline, digit: int) -> dict:
    """The erased model at every guidance a user would pick (and the pipeline's default), on fresh noise."""
    return guidance_sweep(
        pipeline,
        [digit],
        scales=GUIDANCE_SCALES,
        samples_per_class=args.final_samples,
        forget_samples_per_class=args.final_forget_samples,
        seed=1,  # not the seed of the erase command's own "after" evaluation
    )


def attacks(args, pipeline, digit: int) -> dict:
    """Inversion, relearning and relearning after the embedding reset, each at the default budget."""
    budget = AttackArguments(relearn_steps=2, inversion_steps=2, attack_images=4) if args.quick else AttackArguments()
    forget = 4 if args.quick else 50
    evaluation = EvaluationArguments(eval_samples_per_class=2 if args.quick else 10, forget_samples_per_class=forget)
    return run_attacks(pipeline, DIGIT_NAMES[digit], arguments=budget, evaluation=evaluation)


def headline(row: dict) -> dict:
    """The worst FA and RA over the guidance sweep, FID at guidance 2, and each attack's ASR."""
    final = row["final"]
    summary = {
        "FA_worst": final["FA_worst"],
        "RA_worst": final["RA_worst"],
        "worst_guidance": final["worst_guidance"],
        "FID_g2": final["per_guidance"]["2.0"]["FID"],
    }
    if row.get("attacks"):
        summary |= {f"ASR_{kind}": record["ASR"] for kind, record in row["attacks"]["attacks"].items()}
    return summary


def drawn_instead(final: dict, digit: int) -> str:
    """What the erased model draws most when asked for the digit, at the pipeline's default guidance, and how often
    (the judge's 11th answer is "no digit": a blank or an artefact)."""
    distribution = final["per_guidance"][str(float(final["default_guidance"]))]["label_distribution"]
    shares = {str(k): v for k, v in distribution.items()}[str(digit)]  # int keys in memory, str ones from JSON
    top = max(range(len(shares)), key=shares.__getitem__)
    return f"{top if top < 10 else 'no digit'} ({100 * shares[top]:.0f}%)"


def fmt(value, percent: bool = False) -> str:
    if value is None:
        return "not reached"
    return f"{100 * value:.1f}%" if percent else f"{value:.2f}"


def save_results(path: Path, command: str, extra_args: list[str], label: str | None, rows: list[dict]) -> None:
    """The raw results so far, written whole (a temporary file renamed over the old one)."""
    payload = {"command": command, "extra_args": extra_args, "label": label, "rows": rows}
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(payload, indent=2, default=str))
    partial.replace(path)


def resumed_rows(path: Path | None, digits: list[int]) -> list[dict]:
    """The rows of `digits` that an earlier run with the same --results_json finished."""
    if path is None:
        raise ValueError("--resume continues the run recorded in --results_json: give it.")
    if not path.exists():
        return []
    rows = [row for row in json.loads(path.read_text())["rows"] if row["digit"] in digits]
    print(f"Resuming: digits {[row['digit'] for row in rows]} are done in {path}.", flush=True)
    return rows


def render_section(rows: list[dict], command: str, plot: Path | None, extra_args: list[str], family: str) -> str:
    reached = sum(r["iterations_to_forget"] is not None for r in rows)
    worst = [headline(r) for r in rows]
    held = sum(forgotten_at_every_guidance(r["final"], r["base_final"]) for r in rows)
    title = TITLES.get(family, family)
    first = rows[0]
    scales = ", ".join(first["final"]["per_guidance"])
    attacked = first.get("attacks") is not None
    prompts = {
        "sd": " Each digit is prompted with its 8 training captions and 4 held-out phrasings; FA covers all 12.",
        "sd3": " Each digit is prompted with its 8 training captions (its frozen random text encoders do not carry "
        "the held-out phrasings).",
    }.get(family, "")
    lines = [
        f"<!-- digits-{family}-sfr-on:start -->",
        f"## SFR-on on the digits {title}, one run per digit",
        "",
        f"- Command: `{command}`",
        f"- Date: {first['date']}; commit: {first['commit']}; machine: {first['machine']}",
        "- Settings: `scripts/erase_concept.py` defaults"
        + (f" plus `{' '.join(extra_args)}`" if extra_args else "")
        + f"; tracked every {first['eval_every']} iterations on {first['after']['forget_samples']} samples of the "
        f"digit and {first['after']['remain_samples_per_class']} of each other digit, each evaluation on fresh "
        "noise; judged by the bundled classifier (20 DDIM steps)." + prompts,
        f"- *FA, RA (worst)*: the final model at guidance {scales} (the pipeline's default is "
        f"{first['final']['default_guidance']:g}), {first['final']['per_guidance']['2.0']['forget_samples']} samples "
        f"of the digit and {first['final']['per_guidance']['2.0']['remain_samples_per_class']} of each other digit "
        "per scale: the highest FA and the lowest RA over the scales (*RA base (worst)*: the original model's, on "
        "the same noise). FID-digits at guidance 2 on the nine other digits against held-out real ones.",
        "- *Iterations to forget*: the first tracked iteration from which FA ≤ 1% with RA ≥ base RA − 1 point holds "
        "at every later evaluation.",
        "- *Seconds*: saliency mask + erasure loop, evaluation excluded.",
    ]
    if attacked:
        budget = first["attacks"]["arguments"]
        lines.append(
            f"- *ASR*: FA after each attack (`sfr_diffusion.attacks`, {budget['attack_images']} real images of the "
            f"digit): conditioning inversion ({budget['inversion_steps']} steps at "
            f"{budget['inversion_learning_rate']:g}), relearning and relearning after resetting the digit's "
            f"embedding row(s) ({budget['relearn_steps']} steps at the family's learning rate); judged at guidance 2."
        )
    header = "| digit | FA before | FA after (worst) | RA base (worst) | RA after (worst) | FID before | FID after | "
    header += "iterations to forget | drawn instead (default g) | "
    header += "ASR inversion | ASR relearn | ASR relearn + reset | " if attacked else ""
    header += "mask density | seconds (mask + erase) |"
    lines += ["", header, "|" + "---|" * (header.count("|") - 1)]
    for r, w in zip(rows, worst, strict=True):
        b = r["before"]
        cells = [
            f"{r['digit']} ({r['name']})",
            fmt(b["FA"], True),
            fmt(w["FA_worst"], True) + f" (at {w['worst_guidance']:g})",
            fmt(r["base_final"]["RA_worst"], True),
            fmt(w["RA_worst"], True),
            fmt(b["FID"]),
            fmt(w["FID_g2"]),
            f"{r['iterations_to_forget'] or 'not reached'} of {r['steps']}",
            drawn_instead(r["final"], r["digit"]),
        ]
        if attacked:
            cells += [fmt(w[f"ASR_{kind}"], True) for kind in ("inversion", "relearn", "relearn_reset")]
        cells += [f"{r['mask_density']:.1%}" if r["mask_density"] is not None else "–",
                  f"{r['seconds']['mask']:.1f} + {r['seconds']['train']:.1f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"**Forgetting that holds (FA ≤ 1% with RA ≥ base − 1 point from some tracked iteration on) on {reached} of "
        f"{len(rows)} digits; at every guidance scale of the final model (RA against the original's at that scale) "
        f"on {held} of {len(rows)}.**",
    ]
    if plot is not None:
        shown = plot.resolve().relative_to(ROOT) if plot.resolve().is_relative_to(ROOT) else plot
        lines += ["", f"![FA and RA against iteration]({shown.as_posix()})"]
    lines += [f"<!-- digits-{family}-sfr-on:end -->"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default="digits-ddpm", help="digits-ddpm, digits-dit, digits-sd or a digits-world folder."
    )
    parser.add_argument("--digits", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--eval_every", type=int, default=10)
    parser.add_argument("--plot_digit", type=int, default=3)
    parser.add_argument("--plot_eval_every", type=int, default=5, help="Finer tracking for the plotted digit.")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--plot", type=Path, default=None, help="Default: docs/sfr_on_digits_<family>_curve.png.")
    parser.add_argument("--results_json", type=Path, default=None, help="Also write the raw results here.")
    parser.add_argument("--track_samples", type=int, default=20, help="Tracked evaluations: per other class.")
    parser.add_argument("--track_forget_samples", type=int, default=50, help="Tracked: of the forgotten digit.")
    parser.add_argument("--final_samples", type=int, default=30, help="Final sweep: per other class.")
    parser.add_argument("--final_forget_samples", type=int, default=100, help="Final sweep: of the forgotten digit.")
    parser.add_argument("--attacks", action="store_true", help="Also attack every erased model (default budget).")
    parser.add_argument("--quick", action="store_true", help="Fewer samples; does not touch BENCHMARKS.md.")
    parser.add_argument("--render_only", type=Path, default=None, help="Rewrite the tables from a --results_json.")
    parser.add_argument("--resume", action="store_true", help="Skip the digits --results_json already holds.")
    parser.add_argument("--label", default=None, help="compare_sfr_on.py's name of the setting (default: options).")
    args, extra_args = parser.parse_known_args(argv)
    if args.quick:
        args.track_samples, args.track_forget_samples, args.final_samples, args.final_forget_samples = 2, 4, 2, 4
    if args.render_only:
        payload = json.loads(args.render_only.read_text())
        rows = payload["rows"]
        family = rows[0].get("family", "ddpm")
        args.plot = args.plot or ROOT / "docs" / f"sfr_on_digits_{family}_curve.png"
        plot_rows = [r for r in rows if r["digit"] == args.plot_digit]
        if plot_rows:
            plot_curve(plot_rows[0]["history"], plot_rows[0]["name"], plot_rows[0]["before"]["RA"], args.plot, family)
        write_section(args.output, render_section(rows, payload["command"], args.plot if plot_rows else None,
                                                  payload["extra_args"], family))  # fmt: skip
        return rows

    command = ("python benchmarks/benchmark_sfr_on.py " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    rows = resumed_rows(args.results_json, args.digits) if args.resume else []
    samples = ["--eval_samples_per_class", str(args.track_samples),
               "--forget_samples_per_class", str(args.track_forget_samples)]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for digit in [d for d in args.digits if d not in {row["digit"] for row in rows}]:
            every = args.plot_eval_every if digit == args.plot_digit else args.eval_every
            result = erase_command.main(
                [
                    "--concept",
                    DIGIT_NAMES[digit],
                    "--pretrained_model_name_or_path",
                    args.model,
                    "--output_dir",
                    f"{tmp}/erase-{digit}",
                    "--eval_every",
                    str(every),
                    *samples,
                    *extra_args,
                ]
            )
            summary = result.config  # what the export's unlearning_config.json records
            before, after = summary["metrics"]["before"], summary["metrics"]["after"]
            row = {
                "digit": digit,
                "name": summary["erased"]["concept"],
                "before": before,
                "after": after,
                "steps": summary["steps"],
                "eval_every": every,
                "iterations_to_forget": iterations_to_forget(summary["history"], before["RA"]),
                "mask_density": (summary["mask_statistics"] or {}).get("density"),  # None: a method without a mask
                "seconds": summary["seconds"],
                "history": summary["history"],
                "base_final": final_judgement(args, load_pipeline(args.model), digit),
                "final": final_judgement(args, result.pipeline, digit),
                "attacks": attacks(args, result.pipeline, digit) if args.attacks else None,
                "family": summary["family"],
                "date": datetime.date.today().isoformat(),
                "commit": git_commit(ROOT),
                "machine": machine_description(),
            }
            rows.append(row)
            if args.results_json:  # after every digit, so that an interrupted run resumes (--resume)
                save_results(args.results_json, command, extra_args, args.label, rows)
            shown = {k: v for k, v in row.items() if k not in ("history", "final", "attacks")}
            print(json.dumps({**shown, **headline(row)}, default=str), flush=True)

    family = rows[0]["family"]
    plot_rows = [r for r in rows if r["digit"] == args.plot_digit]
    plot = None
    if plot_rows and not args.quick:
        plot = args.plot or ROOT / "docs" / f"sfr_on_digits_{family}_curve.png"
        plot_curve(plot_rows[0]["history"], plot_rows[0]["name"], plot_rows[0]["before"]["RA"], plot, family)
    rows.sort(key=lambda row: args.digits.index(row["digit"]))
    if args.results_json:
        save_results(args.results_json, command, extra_args, args.label, rows)
    if not args.quick:
        write_section(args.output, render_section(rows, command, plot, extra_args, family))
    return rows


if __name__ == "__main__":
    main()
