"""SFR-on alone, one run per digit, on a digits-world model; writes its section of BENCHMARKS.md.

    python benchmarks/benchmark_sfr_on.py               # all ten digits (about 15 minutes on 2 cores)
    python benchmarks/benchmark_sfr_on.py --model digits-sd
    python benchmarks/benchmark_sfr_on.py --digits 3 7 --quick

(``benchmarks/benchmark.py`` compares SFR-on with the baselines and retrain.)

For every digit it runs the erase command (``sfr_diffusion.commands.erase``, what ``scripts/erase_concept.py`` runs)
with its defaults, plus FA/RA tracking every ``--eval_every`` iterations and any option this script does not know
(e.g. ``--max_train_steps 100``), then records FA, RA and FID-digits before and after, the first tracked iteration at
which FA ≤ 1% with RA ≥ base − 1 point, and the wall time of the mask and of the erasure (evaluation excluded). It
plots FA and RA against iteration for ``--plot_digit`` and replaces the marked section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path

from reporting import FA_TARGET, RA_TOLERANCE, git_commit, iterations_to_forget, machine_description, write_section

from sfr_diffusion.commands import erase as erase_command
from sfr_diffusion.digits import DIGIT_NAMES

ROOT = Path(__file__).resolve().parent.parent
TITLES = {"ddpm": "DDPM", "dit": "DiT", "sd": "SD (text-to-image)"}


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


def fmt(value, percent: bool = False) -> str:
    if value is None:
        return "not reached"
    return f"{100 * value:.1f}%" if percent else f"{value:.2f}"


def render_section(rows: list[dict], command: str, plot: Path | None, extra_args: list[str], family: str) -> str:
    reached = sum(r["iterations_to_forget"] is not None for r in rows)
    kept = sum(r["after"]["FA"] <= FA_TARGET and r["after"]["RA"] >= r["before"]["RA"] - RA_TOLERANCE for r in rows)
    title = TITLES.get(family, family)
    paraphrases = "FA_paraphrases" in rows[0]["after"]
    prompts = (
        " Each digit is prompted with its 8 training captions and 4 held-out phrasings (4 samples each); FA covers"
        " all 12, *FA paraphrases* only the held-out ones, never used in training or erasure."
        if paraphrases
        else ""
    )
    lines = [
        f"<!-- digits-{family}-sfr-on:start -->",
        f"## SFR-on on the digits {title}, one run per digit",
        "",
        f"- Command: `{command}`",
        f"- Date: {rows[0]['date']}; commit: {rows[0]['commit']}; machine: {rows[0]['machine']}",
        "- Settings: `scripts/erase_concept.py` defaults"
        + (f" plus `{' '.join(extra_args)}`" if extra_args else "")
        + "; FA/RA from 50 samples per class (guidance 2.0, 20 DDIM steps, seed 0) judged by the bundled classifier;"
        " FID-digits on the nine remaining classes against held-out real digits." + prompts,
        "- *Iterations to forget*: first tracked iteration with FA ≤ 1% and RA ≥ base RA − 1 point; in brackets,"
        " how often FA/RA were tracked.",
        "- *Seconds*: saliency mask + erasure loop, evaluation excluded.",
        "",
        "| digit | FA before | FA after | "
        + ("FA paraphrases before | FA paraphrases after | " if paraphrases else "")
        + "RA before | RA after | FID before | FID after | iterations | "
        "iterations to forget | mask density | seconds (mask + erase) |",
        "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if paraphrases else ""),
    ]
    for r in rows:
        b, a = r["before"], r["after"]
        held_out = f"{fmt(b['FA_paraphrases'], True)} | {fmt(a['FA_paraphrases'], True)} | " if paraphrases else ""
        lines.append(
            f"| {r['digit']} ({r['name']}) | {fmt(b['FA'], True)} | {fmt(a['FA'], True)} | {held_out}"
            f"{fmt(b['RA'], True)} | "
            f"{fmt(a['RA'], True)} | {fmt(b['FID'])} | {fmt(a['FID'])} | {r['steps']} | "
            f"{r['iterations_to_forget'] or 'not reached'} (every {r['eval_every']}) | {r['mask_density']:.1%} | "
            f"{r['seconds']['mask']:.1f} + {r['seconds']['train']:.1f} |"
        )
    lines += [
        "",
        f"**Target (FA ≤ 1% with RA ≥ base − 1 point) reached on {reached} of {len(rows)} digits; "
        f"still met at the last iteration on {kept} of {len(rows)}.**",
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
    parser.add_argument("--quick", action="store_true", help="Fewer samples; does not touch BENCHMARKS.md.")
    parser.add_argument("--render_only", type=Path, default=None, help="Rewrite the tables from a --results_json.")
    args, extra_args = parser.parse_known_args(argv)
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

    rows = []
    samples = ["--eval_samples_per_class", "10"] if args.quick else []
    with tempfile.TemporaryDirectory() as tmp:
        for digit in args.digits:
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
                "mask_density": summary["mask_statistics"]["density"],
                "seconds": summary["seconds"],
                "history": summary["history"],
                "family": summary["family"],
                "date": datetime.date.today().isoformat(),
                "commit": git_commit(ROOT),
                "machine": machine_description(),
            }
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "history"}, default=str), flush=True)

    family = rows[0]["family"]
    plot_rows = [r for r in rows if r["digit"] == args.plot_digit]
    plot = None
    if plot_rows and not args.quick:
        plot = args.plot or ROOT / "docs" / f"sfr_on_digits_{family}_curve.png"
        plot_curve(plot_rows[0]["history"], plot_rows[0]["name"], plot_rows[0]["before"]["RA"], plot, family)
    command = ("python benchmarks/benchmark_sfr_on.py " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    if args.results_json:
        payload = {"command": command, "extra_args": extra_args, "rows": rows}
        args.results_json.write_text(json.dumps(payload, indent=2, default=str))
    if not args.quick:
        write_section(args.output, render_section(rows, command, plot, extra_args, family))
    return rows


if __name__ == "__main__":
    main()
