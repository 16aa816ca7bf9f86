"""Compare SFR-on settings (forget loss, learning rate, robust options) from `benchmark_sfr_on.py` results JSONs, in
one table per model; writes its section of BENCHMARKS.md.

    python benchmarks/benchmark_sfr_on.py --model digits-dit --digits 2 5 8 --attacks --forget_loss ascent \\
        --results_json docs/choice/dit_ascent.json --output /tmp/unused.md
    python benchmarks/benchmark_sfr_on.py --model digits-dit --digits 2 5 8 --attacks --forget_loss remap_others \\
        --results_json docs/choice/dit_remap_others.json --output /tmp/unused.md
    python benchmarks/compare_sfr_on.py docs/choice/*.json

Each results JSON is one setting on one model (its label: the options it added to the defaults). A run that did not
measure the original model's guidance sweep gets it measured here (the same settings and seed), so that every RA is
compared with the original's at the same guidance scale.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmark_sfr_on import TITLES, final_judgement
from reporting import FA_TARGET, write_section

from sfr_diffusion import load_pipeline
from sfr_diffusion.forgetting import forgotten_at_every_guidance

ROOT = Path(__file__).resolve().parent.parent
ATTACKS = ("inversion", "relearn", "relearn_reset")


def pct(value) -> str:
    return "–" if value is None else f"{100 * value:.0f}"


def with_base_sweeps(payload: dict, model: str) -> bool:
    """Measure the original model's guidance sweep where a row lacks it; returns whether anything was added."""
    missing = [row for row in payload["rows"] if "base_final" not in row]
    if not missing:
        return False
    first = missing[0]["final"]["per_guidance"]["2.0"]
    settings = argparse.Namespace(
        final_samples=first["remain_samples_per_class"], final_forget_samples=first["forget_samples"]
    )
    original = load_pipeline(model)
    for row in missing:
        row["base_final"] = final_judgement(settings, original, row["digit"])
    return True


def model_of(payload: dict) -> str:
    words = payload["command"].split()
    return words[words.index("--model") + 1] if "--model" in words else "digits-ddpm"


def setting_of(payload: dict) -> str:
    """The run's --label, else the options it added to the defaults (as code)."""
    if payload.get("label"):
        return payload["label"]
    return f"`{' '.join(payload['extra_args'])}`" if payload["extra_args"] else "defaults"


def merged(payloads: list[dict]) -> list[dict]:
    """One payload per (model, setting): the rows of runs that share both, in order (e.g. one run per digit)."""
    groups: dict[tuple[str, str], dict] = {}
    for payload in payloads:
        key = (model_of(payload), setting_of(payload))
        if key in groups:
            groups[key]["rows"] = groups[key]["rows"] + payload["rows"]
        else:
            groups[key] = dict(payload)
    return list(groups.values())


def summary(payload: dict) -> dict:
    """Per setting: digits that hold, that hold at every guidance, worst FA/RA, FID, ASRs (mean over digits)."""
    rows = payload["rows"]
    n = len(rows)

    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    finals = [r["final"] for r in rows]
    return {
        "digits": [r["digit"] for r in rows],
        "held": sum(r["iterations_to_forget"] is not None for r in rows),
        "held_every_guidance": sum(forgotten_at_every_guidance(r["final"], r["base_final"]) for r in rows),
        "iterations": [r["iterations_to_forget"] for r in rows],
        "FA_worst": max(f["FA_worst"] for f in finals),
        "RA_drop_worst": max(
            r["base_final"]["per_guidance"][g]["RA"] - m["RA"]
            for r in rows
            for g, m in r["final"]["per_guidance"].items()
        ),
        "FID_ratio": mean(
            r["final"]["per_guidance"]["2.0"]["FID"] / r["base_final"]["per_guidance"]["2.0"]["FID"] for r in rows
        ),
        "ASR": {
            k: mean((r.get("attacks") or {}).get("attacks", {}).get(k, {}).get("ASR") for r in rows) for k in ATTACKS
        },
        "n": n,
    }


def render(payloads: list[dict], command: str) -> str:
    dates = [row["date"] for payload in payloads for row in payload["rows"]]
    lines = [
        "<!-- sfr-on-settings:start -->",
        "## Choosing SFR-on's defaults: settings compared",
        "",
        f"- Command: `{command}`, from the results of the `benchmarks/benchmark_sfr_on.py` runs each row names.",
        f"- Dates: {' to '.join(sorted({min(dates), max(dates)}))}; machine: {payloads[0]['rows'][0]['machine']}",
        "- *holds*: digits on which FA ≤ 1% with RA ≥ base − 1 point holds from some tracked iteration to the end "
        "(50 iterations, tracked every 10 on fresh noise); *every guidance*: digits whose final model meets the "
        "rule at guidance 1, 2, 4, 7.5 and the pipeline's default, each RA against the original's at that scale; "
        "*FA worst*: the highest FA over digits and scales; *RA drop*: the largest fall of RA below the original's "
        "at the same scale; *FID ratio*: erased / original FID-digits at guidance 2 (mean over digits); *ASR*: FA "
        "after each attack (mean over digits; `sfr_diffusion.attacks` defaults, judged at guidance 2; relearning "
        "fine-tunes at the family's default learning rate when the run was made, recorded in each results JSON).",
        "- Each row is one setting: its label, or the options it added to the defaults of its day (the results "
        "JSONs record the full command and commit).",
    ]
    by_model: dict[str, list[dict]] = {}
    for payload in merged(payloads):
        by_model.setdefault(model_of(payload), []).append(payload)
    for model, group in by_model.items():
        family = group[0]["rows"][0]["family"]
        lines += [
            "",
            f"### {TITLES.get(family, family)} (`{model}`)",
            "",
            "| setting | digits | holds | iterations to forget | every guidance | FA worst | RA drop | FID ratio | "
            "ASR inversion | ASR relearn | ASR relearn + reset |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for payload in group:
            s = summary(payload)
            its = " / ".join("–" if i is None else str(i) for i in s["iterations"])
            digits = ", ".join(str(d) for d in s["digits"])
            lines.append(
                f"| {setting_of(payload)} | {digits} | {s['held']} of {s['n']} | {its} | "
                f"{s['held_every_guidance']} of {s['n']} | {pct(s['FA_worst'])}% | "
                f"{100 * s['RA_drop_worst']:.1f} points | {s['FID_ratio']:.2f} | "
                + " | ".join("–" if s["ASR"][k] is None else f"{pct(s['ASR'][k])}%" for k in ATTACKS)
                + " |"
            )
    lines += ["", f"FA target: {100 * FA_TARGET:g}%.", "<!-- sfr-on-settings:end -->"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="+", help="benchmark_sfr_on.py --results_json files.")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    payloads = []
    for path in args.results:
        payload = json.loads(path.read_text())
        if with_base_sweeps(payload, model_of(payload)):
            path.write_text(json.dumps(payload, indent=2, default=str))  # measured once, kept with the run
        payloads.append(payload)
    command = "python benchmarks/compare_sfr_on.py " + " ".join(str(p) for p in args.results)
    write_section(args.output, render(payloads, command))


if __name__ == "__main__":
    main()
