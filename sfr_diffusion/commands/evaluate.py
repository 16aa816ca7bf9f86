"""Print FA, RA and FID of a pipeline that a preset can judge (today: the digits world's DDPM, DiT and SD) as JSON.

    python scripts/evaluate.py outputs/digits-ddpm-erase-three     # the erased concept is read from the export
    python scripts/evaluate.py digits-ddpm --forget three          # bundled: digits-ddpm, digits-dit, digits-sd
    python scripts/evaluate.py outputs/digits-dit-erase-seven --guidance_scales 1 2 4 7.5

For the digits SD each digit is prompted with its training captions and with held-out phrasings never used in
training or erasure; FA_paraphrases is FA on the latter alone. With --guidance_scales the pipeline is judged at each
scale and at its own default guidance (instead of --guidance_scale), and the worst FA and RA over them are reported:
an erasure that holds at one guidance may not at another. Installed as `sfr-evaluate`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from ..arguments import EvaluationArguments
from ..cli import HelpFormatter, OneLineParser, add_dataclass_arguments, dataclass_from_args, number, run_command
from ..export import erased_concepts, read_unlearning_config
from ..forgetting import default_guidance_scale, sweep_guidance
from ..loading import load_pipeline
from ..presets import preset_for, resolve_model

PROG = "evaluate.py"


def main(argv=None) -> dict:
    parser = OneLineParser(prog=PROG, description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("pipeline", help="A pipeline folder or export, or a bundled alias.")
    parser.add_argument("--forget", action="append", default=None, help="An erased class or concept (repeatable).")
    parser.add_argument("--seed", type=number(int), default=0, help="Seed of the judged samples.")
    parser.add_argument(
        "--guidance_scales",
        type=number(float),
        nargs="+",
        default=None,
        help="Judge at each of these guidance scales and the pipeline's default (e.g. 1 2 4 7.5); report the worst.",
    )
    add_dataclass_arguments(parser, EvaluationArguments, "evaluation")
    args = parser.parse_args(argv)
    settings = dataclass_from_args(EvaluationArguments, args)

    path = Path(resolve_model(args.pipeline))
    pipeline = load_pipeline(path)
    preset = preset_for(pipeline)
    if preset is None or preset.evaluate is None:
        raise ValueError(f"{args.pipeline} is not a model any preset can judge (the digits world's, today).")
    forget = args.forget
    config = read_unlearning_config(path)
    if forget is None and config is not None:
        forget = erased_concepts(config)
    if args.guidance_scales:
        metrics = sweep_guidance(
            lambda scale: preset.evaluate(pipeline, forget or [], replace(settings, guidance_scale=scale), args.seed),
            args.guidance_scales,
            default_guidance_scale(pipeline),
        )
        judged, fa = next(iter(metrics["per_guidance"].values())), metrics["FA_worst"]
    else:
        metrics = judged = preset.evaluate(pipeline, forget or [], settings, args.seed)
        fa = metrics.get("FA")
    if forget and fa is None:
        raise ValueError(f"{forget} names no digit: the digits world judges digits only, so there is no FA to give.")
    print(json.dumps({"pipeline": args.pipeline, "forget": judged.get("forget_classes", forget), **metrics}, indent=2))
    return metrics


def cli(argv=None) -> int:
    return run_command(main, argv, PROG)


if __name__ == "__main__":
    sys.exit(cli())
