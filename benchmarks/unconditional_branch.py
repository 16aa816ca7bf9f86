"""Does the erased model still draw the concept without a condition? The share of unconditional samples (the null
class; the empty prompt), at guidance 1, that the bundled judge calls the erased digit: the original, retrain,
SFR-on's defaults and SFR-on with ``--unconditional_forget``, with each erasure's FA/RA/FID-digits at guidance 2.
Writes its section of BENCHMARKS.md.

    python benchmarks/unconditional_branch.py --models digits-ddpm digits-dit digits-sd --digits 3 0 5 8 \\
        --results_json docs/unconditional_branch.json --resume
    python benchmarks/unconditional_branch.py --render_only docs/unconditional_branch.json
    python benchmarks/unconditional_branch.py --models digits-ddpm --digits 3 --quick   # a smoke run

Classifier-free guidance samples from ``eps(x_t, null) + s (eps(x_t, c) - eps(x_t, null))``: the remap erases the
concept from ``eps(x_t, c)`` only, so the unconditional branch, and a user who samples with it, still draws the concept
as often as the original did. A model retrained without the concept never learned it there.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path

import torch
from reporting import git_commit, machine_description, write_section

from sfr_diffusion import EvaluationArguments, SFROnConfig, TrainingArguments, erase, load_pipeline
from sfr_diffusion.digits import DIGIT_NAMES
from sfr_diffusion.digits.judge import DigitsClassifier
from sfr_diffusion.digits.registry import shipped_path
from sfr_diffusion.digits.retrain import retrain
from sfr_diffusion.families import family_for

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {"defaults": {}, "unconditional_forget": {"unconditional_forget": True}}
COMMAND = "python benchmarks/unconditional_branch.py"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["digits-ddpm", "digits-dit", "digits-sd"])
    parser.add_argument("--digits", type=int, nargs="+", default=[3, 0, 5, 8])
    parser.add_argument("--samples", type=int, default=300, help="Unconditional samples judged per model.")
    parser.add_argument("--results_json", type=Path, default=None, help="Default: docs/unconditional_branch.json.")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--resume", action="store_true", help="Keep the rows --results_json already holds.")
    parser.add_argument("--render_only", type=Path, default=None, help="Rewrite the section from a results JSON.")
    parser.add_argument("--quick", action="store_true", help="A tiny budget; does not touch BENCHMARKS.md.")
    args = parser.parse_args(argv)
    bad = [d for d in args.digits if d not in range(len(DIGIT_NAMES))]
    if bad:
        parser.error(f"--digits must be 0..9, got {bad}.")
    if args.quick:
        args.samples = 8
    if args.results_json is None:
        quick = Path(tempfile.gettempdir()) / "sfr_unconditional_quick.json"
        args.results_json = quick if args.quick else ROOT / "docs" / "unconditional_branch.json"
    return args


@torch.no_grad()
def unconditional_shares(pipeline, samples: int, judge: DigitsClassifier) -> dict[int, float]:
    """Share of `samples` unconditional samples (guidance 1, 20 steps, seed 0) judged as each digit."""
    family = family_for(pipeline)
    null = "" if family.text_conditioned else family.null_class_id
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline(
        [null] * samples, guidance_scale=1.0, num_inference_steps=20, generator=torch.manual_seed(0), output_type="pt"
    ).images
    labels = judge.predict(images.mul(2).sub(1).cpu().float())
    return {digit: (labels == digit).float().mean().item() for digit in range(len(DIGIT_NAMES))}


def erase_digit(args, model: str, digit: int, options: dict):
    """SFR-on's erasure of `digit` with the defaults plus `options`, judged before and after as the API does."""
    training, evaluate = None, None
    if args.quick:
        training = TrainingArguments(max_train_steps=2)
        evaluate = EvaluationArguments(eval_samples_per_class=2)
    return erase(load_pipeline(model), DIGIT_NAMES[digit], method=SFROnConfig(**options), training=training,
                 evaluate=evaluate)  # fmt: skip


def measure(args, model: str, digit: int, results: dict, judge: DigitsClassifier) -> None:
    """One digit's rows: retrain's and each SFR-on setting's unconditional shares (and metrics), saved as they come."""
    rows = results["rows"]
    if f"{model}|original" not in rows:
        rows[f"{model}|original"] = unconditional_shares(load_pipeline(model), args.samples, judge)
    if f"{model}|retrain|{digit}" not in rows and not args.quick:
        path = retrain(family_for(load_pipeline(model)).name, digit)
        rows[f"{model}|retrain|{digit}"] = unconditional_shares(load_pipeline(str(path)), args.samples, judge)
    for name, options in SETTINGS.items():
        key = f"{model}|{name}|{digit}"
        if key in rows:
            continue
        result = erase_digit(args, model, digit, options)
        rows[key] = {
            "shares": unconditional_shares(result.pipeline, args.samples, judge),
            **{when: {k: result.metrics[when].get(k) for k in ("FA", "RA", "FID")} for when in ("before", "after")},
            "seconds": result.seconds,
        }
        save(args, results)
        print(key, {k: round(v, 3) for k, v in rows[key]["after"].items()}, flush=True)
    save(args, results)


def save(args, results: dict) -> None:
    args.results_json.parent.mkdir(parents=True, exist_ok=True)
    staging = args.results_json.with_name(args.results_json.name + ".tmp")
    staging.write_text(json.dumps(results, indent=1))
    staging.replace(args.results_json)


def run(args, command: str) -> dict:
    results = {"samples": args.samples, "rows": {}}
    if args.resume and args.results_json.exists():
        saved = json.loads(args.results_json.read_text())
        if saved["samples"] == args.samples:
            results = saved
        else:
            print(f"Not resuming from {args.results_json}: it was run with --samples {saved['samples']}.", flush=True)
    results |= {
        "command": command,
        "date": datetime.date.today().isoformat(),
        "commit": git_commit(ROOT),
        "machine": machine_description(),
    }
    judge = DigitsClassifier.from_pretrained(shipped_path("judge"))
    for model in args.models:
        for digit in args.digits:
            measure(args, model, digit, results, judge)
    return results


def percent(share) -> str:
    return "–" if share is None else f"{100 * share:.1f}%"


def render(results: dict) -> str:
    rows = results["rows"]
    lines = [
        "<!-- unconditional-branch:start -->",
        "## The unconditional branch: does the erased model draw the digit without a condition?",
        "",
        f"- Command: `{results['command']}`",
        f"- Date: {results['date']}; commit: {results['commit']}; machine: {results['machine']}",
        f"- *Unconditional share*: of {results['samples']} samples drawn with the null class (the empty prompt on "
        "the SD), guidance 1, 20 steps, seed 0, the share the bundled judge calls the erased digit (a tenth of the "
        "original's samples are each digit's, give or take its own bias). SFR-on's FA/RA/FID-digits: the erasure's "
        "own judgement at guidance 2 (50 samples per digit).",
        "",
        "| model | digit | original | retrain | SFR-on | SFR-on `--unconditional_forget` "
        "| FA / RA / FID, SFR-on | FA / RA / FID, `--unconditional_forget` | FID before |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    digits_of = sorted({(k.split("|")[0], int(k.split("|")[2])) for k in rows if "|defaults|" in k}, key=str)
    for model, digit in digits_of:
        defaults, forget = rows.get(f"{model}|defaults|{digit}"), rows.get(f"{model}|unconditional_forget|{digit}")
        retrained = rows.get(f"{model}|retrain|{digit}")

        def metrics(row) -> str:
            if row is None:
                return "–"
            after = row["after"]
            return f"{percent(after['FA'])} / {percent(after['RA'])} / {after['FID']:.2f}"

        cells = [
            model,
            f"{digit} ({DIGIT_NAMES[digit]})",
            percent(rows[f"{model}|original"][str(digit)]),
            percent(retrained[str(digit)] if retrained else None),
            percent(defaults["shares"][str(digit)]),
            percent(forget["shares"][str(digit)] if forget else None),
            metrics(defaults),
            metrics(forget),
            f"{defaults['before']['FID']:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "<!-- unconditional-branch:end -->", ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.render_only:
        results = json.loads(args.render_only.read_text())
    else:
        command = f"{COMMAND} " + " ".join(sys.argv[1:] if argv is None else argv)
        results = json.loads(json.dumps(run(args, command.strip())))  # digit keys as the saved JSON has them
    if not args.quick:
        write_section(args.output, render(results))
    return results


if __name__ == "__main__":
    main()
