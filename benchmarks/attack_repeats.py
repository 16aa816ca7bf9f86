"""Is an erased model easier to recover than retrain, beyond the noise of one attack? Every attack of
``sfr_diffusion.attacks`` on SFR-on's export (the erase command's defaults) and on retrain, repeated with several
attack seeds (each draws its own attack images, noise, timesteps and judged samples); writes its section of
BENCHMARKS.md.

    python benchmarks/attack_repeats.py --models digits-ddpm digits-dit --digits 3 0 1 5 8 --seeds 0 1 2 3 \\
        --results_json docs/attack_repeats.json --resume
    python benchmarks/attack_repeats.py --render_only docs/attack_repeats.json
    python benchmarks/attack_repeats.py --models digits-ddpm --digits 5 8 --adversarial_steps 3 --resume  # + options
    python benchmarks/attack_repeats.py --models digits-ddpm --digits 3 --seeds 0 1 --quick   # a smoke run

Options this script does not know go to the erase command; the results JSON keeps each setting's exports apart and
attacks retrain once for all of them.

One seed's ASR is a share of ``--forget_samples`` judged samples after one attack; the benchmark's "within retrain
+ 5 points" compares two such shares. Here each digit gets the paired difference (SFR-on − retrain, the same seed
and budget for both) averaged over the seeds, with its standard error (the spread of the per-seed differences /
√seeds). A difference whose mean − 2 SE stays above 5 points is a gap to retrain the noise does not explain.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path

from reporting import git_commit, machine_description, write_section

from sfr_diffusion import EvaluationArguments, load_pipeline
from sfr_diffusion.attacks import ATTACKS, AttackArguments, run_attacks
from sfr_diffusion.commands import erase as erase_command
from sfr_diffusion.digits import DIGIT_NAMES
from sfr_diffusion.digits.retrain import retrain
from sfr_diffusion.families import family_for

ROOT = Path(__file__).resolve().parent.parent
MARGIN = 5.0  # points: the goal's "no higher than retrain's + 5"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["digits-ddpm", "digits-dit"])
    parser.add_argument("--digits", type=int, nargs="+", default=[3, 0, 1, 5, 8])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--forget_samples", type=int, default=100, help="Judged samples of the digit per attack.")
    parser.add_argument("--other_samples", type=int, default=10, help="Judged samples of each other digit (RA).")
    parser.add_argument(
        "--results_json",
        type=Path,
        default=None,
        help="Default: docs/attack_repeats.json (--quick: a temporary file).",
    )
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--resume", action="store_true", help="Keep the attacks --results_json already holds.")
    parser.add_argument("--render_only", type=Path, default=None, help="Rewrite the section from a results JSON.")
    parser.add_argument("--quick", action="store_true", help="A tiny budget; does not touch BENCHMARKS.md.")
    args, args.erase_args = parser.parse_known_args(argv)
    if args.quick:
        args.forget_samples, args.other_samples = 4, 2
    if args.results_json is None:
        quick = Path(tempfile.gettempdir()) / "sfr_attack_repeats_quick.json"
        args.results_json = quick if args.quick else ROOT / "docs" / "attack_repeats.json"
    bad = [d for d in args.digits if d not in range(len(DIGIT_NAMES))]
    if bad:
        parser.error(f"--digits must be 0..9, got {bad}.")
    if len(set(args.seeds)) < len(args.seeds) or len(args.seeds) < 2:
        parser.error("--seeds takes at least two different seeds (a standard error needs two).")
    return args


def attack_budget(args) -> AttackArguments:
    return AttackArguments(relearn_steps=2, inversion_steps=2, attack_images=4) if args.quick else AttackArguments()


def settings_of(args) -> dict:
    """What makes two runs' attacks comparable; a resumed run keeps only attacks made with the same."""
    return {
        "forget_samples": args.forget_samples,
        "other_samples": args.other_samples,
        "budget": asdict(attack_budget(args)),
        "erase": "the erase command's defaults, plus the options each erased model's key names",
    }


def load_results(args) -> dict:
    if args.resume and args.results_json.exists():
        saved = json.loads(args.results_json.read_text())
        if saved["settings"] == json.loads(json.dumps(settings_of(args))):
            return saved
        print(f"Not resuming from {args.results_json}: it was run with other settings.", flush=True)
    return {"settings": settings_of(args), "attacks": {}}


def save_results(args, results: dict) -> None:
    args.results_json.parent.mkdir(parents=True, exist_ok=True)
    staging = args.results_json.with_name(args.results_json.name + ".tmp")
    staging.write_text(json.dumps(results, indent=1, default=str))
    staging.replace(args.results_json)


def attack_seeds(args, results: dict, key: str, model_path: Callable[[], Path], digit: int) -> None:
    """Every attack on the model at `model_path()`, once per seed, each seed's ASRs saved as soon as they are
    measured; `model_path` is called only when a seed is missing (retrain is trained, or found, only then)."""
    missing = [seed for seed in args.seeds if f"{key}|{seed}" not in results["attacks"]]
    if not missing:
        return
    pipeline = load_pipeline(model_path())
    pipeline.set_progress_bar_config(disable=True)
    evaluation = EvaluationArguments(
        eval_samples_per_class=args.other_samples, forget_samples_per_class=args.forget_samples
    )
    for seed in missing:
        budget = attack_budget(args)
        budget.attack_seed = seed
        records = run_attacks(pipeline, DIGIT_NAMES[digit], ATTACKS, arguments=budget, evaluation=evaluation)
        results["attacks"][f"{key}|{seed}"] = {
            kind: {k: record[k] for k in ("ASR", "RA", "steps_to_half", "seconds")}
            for kind, record in records["attacks"].items()
        }
        save_results(args, results)
        print(key, seed, {kind: r["ASR"] for kind, r in results["attacks"][f"{key}|{seed}"].items()}, flush=True)


def erased_key(model: str, setting: str, digit: int) -> str:
    """The results key of SFR-on's export of `digit` erased with `setting` (extra erase options, "" for none)."""
    return f"{model}|erased{' ' + setting if setting else ''}|{digit}"


def run(args, command: str) -> dict:
    results = load_results(args)
    results["commands"] = [c for c in results.get("commands", []) if c != command] + [command]
    # This run's date, commit and machine, read once: the results keep the last run's.
    results |= {
        "date": datetime.date.today().isoformat(),
        "commit": git_commit(ROOT),
        "machine": machine_description(),
    }
    setting = " ".join(args.erase_args)
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            family = family_for(load_pipeline(model)).name
            for digit in args.digits:
                attack_seeds(args, results, f"{model}|retrain|{digit}", partial(retrain, family, digit), digit)
                key = erased_key(model, setting, digit)
                if all(f"{key}|{seed}" in results["attacks"] for seed in args.seeds):
                    continue
                export = Path(tmp) / f"{family}-erase-{digit}"
                erased = erase_command.main(
                    ["--pretrained_model_name_or_path", model, "--concept", DIGIT_NAMES[digit],
                     "--output_dir", str(export), *args.erase_args]
                    + (["--max_train_steps", "2"] if args.quick else [])
                )  # fmt: skip
                # What the attacks start from: the erase command's final FA, RA and FID-digits.
                after = erased.config["metrics"]["after"]
                results.setdefault("erasures", {})[key] = {k: after[k] for k in ("FA", "RA", "FID")} | {
                    "seconds": erased.config["seconds"]
                }
                attack_seeds(args, results, key, lambda export=export: export, digit)
    return results


# ----------------------------------------------------------------------------------------------------------------
# Reporting


def seed_asrs(results: dict, key: str, kind: str) -> dict[int, float]:
    """{seed: ASR in points} of one model's attack `kind`, over the seeds measured."""
    prefix = key + "|"
    return {
        int(k[len(prefix) :]): 100 * record[kind]["ASR"]
        for k, record in results["attacks"].items()
        if k.startswith(prefix) and k[len(prefix) :].isdigit()
    }


def paired_difference(results: dict, model: str, digit: int, kind: str, setting: str = "") -> dict:
    """Mean ASRs (points) of the erased model and retrain over the seeds both were attacked with, and their paired
    difference ± its standard error."""
    erased = seed_asrs(results, erased_key(model, setting, digit), kind)
    retrained = seed_asrs(results, f"{model}|retrain|{digit}", kind)
    seeds = sorted(set(erased) & set(retrained))
    if len(seeds) < 2:
        raise ValueError(f"{model}, digit {digit}: fewer than two seeds attacked on both models.")
    differences = [erased[s] - retrained[s] for s in seeds]
    n = len(differences)
    mean = sum(differences) / n
    spread = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    return {
        "erased": sum(erased[s] for s in seeds) / n,
        "retrain": sum(retrained[s] for s in seeds) / n,
        "difference": mean,
        "se": spread / math.sqrt(n),
        "seeds": n,
    }


def erased_rows(results: dict) -> dict[tuple[str, str], list[int]]:
    """{(model, setting): digits}, in the order measured, of every erased model the results hold."""
    rows: dict[tuple[str, str], list[int]] = {}
    for key in results["attacks"]:
        model, which, digit, _ = key.split("|")
        if which.startswith("erased"):
            digits = rows.setdefault((model, which[len("erased") :].strip()), [])
            digits += [int(digit)] if int(digit) not in digits else []
    return rows


def judgement(cell: dict) -> str:
    """Within retrain + 5 on the mean; else whether the noise explains the excess (mean − 2 SE ≤ 5)."""
    if cell["difference"] <= MARGIN:
        return "within"
    return "above" if cell["difference"] - 2 * cell["se"] > MARGIN else "noise"


def render(results: dict) -> str:
    budget = results["settings"]["budget"]
    commands = ", ".join(f"`{c}`" for c in results["commands"])
    lines = [
        "<!-- attack-repeats:start -->",
        "## Attacks repeated: SFR-on against retrain, beyond one seed's noise",
        "",
        f"Written by {commands}; last on {results['date']} (commit {results['commit']}; {results['machine']}).",
        "",
        "SFR-on's export (the erase command's defaults, plus the options a table names) and retrain, each attacked "
        f"with the same seeds (every attack at the comparison's budget: {budget['attack_images']} real images, "
        f"inversion {budget['inversion_steps']} steps at {budget['inversion_learning_rate']:g}, relearning "
        f"{budget['relearn_steps']} steps; a seed draws the attack's images, noise and timesteps and the judged "
        f"samples, {results['settings']['forget_samples']} of the digit). Cells: SFR-on's mean ASR / retrain's, "
        "then their paired difference (the same seed) ± its standard error, in points. *within*: the mean "
        f"difference ≤ {MARGIN:g}; *noise*: above {MARGIN:g} but mean − 2 SE ≤ {MARGIN:g}; *above*: mean − 2 SE > "
        f"{MARGIN:g}, a gap the noise does not explain.",
    ]
    summary = []
    for (model, setting), digits in erased_rows(results).items():
        title = f"`{model}`" + (f", `{setting}`" if setting else ", defaults")
        header = ["| digit | seeds | " + " | ".join(ATTACKS) + " |", "|---" * (len(ATTACKS) + 2) + "|"]
        lines += ["", f"### {title}", "", *header]
        counts = {kind: {"within": 0, "noise": 0, "above": 0} for kind in ATTACKS}
        for digit in digits:
            cells = []
            for kind in ATTACKS:
                cell = paired_difference(results, model, digit, kind, setting)
                counts[kind][judgement(cell)] += 1
                cells.append(
                    f"{cell['erased']:.0f} / {cell['retrain']:.0f}, {cell['difference']:+.1f} ± {cell['se']:.1f} "
                    f"*{judgement(cell)}*"
                )
            lines.append(f"| {digit} ({DIGIT_NAMES[digit]}) | {cell['seeds']} | " + " | ".join(cells) + " |")
        erasures = {d: results.get("erasures", {}).get(erased_key(model, setting, d)) for d in digits}
        if all(erasures.values()):
            lines += [
                "",
                "Before the attacks (the erase command's final evaluation, guidance 2): FA / RA in %, per digit: "
                + ", ".join(f"{d}: {100 * m['FA']:.0f} / {100 * m['RA']:.0f}" for d, m in erasures.items())
                + ".",
            ]
            if all("seconds" in m for m in erasures.values()):
                lines[-1] += (
                    " The erasure's training seconds (mask excluded), per digit: "
                    + ", ".join(f"{d}: {m['seconds']['train']:.1f}" for d, m in erasures.items())
                    + "."
                )
        for kind in ATTACKS:
            c = counts[kind]
            summary.append(
                f"- {title}, {kind}: within retrain + {MARGIN:g} on {c['within']} of {len(digits)} digits, above "
                f"it within the noise on {c['noise']}, above beyond the noise on {c['above']}."
            )
    lines += ["", "Computed from the tables:", "", *summary, "<!-- attack-repeats:end -->", ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.render_only:
        results = json.loads(args.render_only.read_text())
    else:
        command = "python benchmarks/attack_repeats.py " + " ".join(sys.argv[1:] if argv is None else argv)
        results = run(args, command.strip())
    if not args.quick:
        write_section(args.output, render(results))
    return results


if __name__ == "__main__":
    main()
