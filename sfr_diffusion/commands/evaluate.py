"""Print FA, RA and FID of a pipeline that a preset can judge (today: the digits world's DDPM, DiT and SD) as JSON.

    python scripts/evaluate.py outputs/digits-ddpm-erase-three     # the erased concept is read from the export
    python scripts/evaluate.py digits-ddpm --forget three          # bundled: digits-ddpm, digits-dit, digits-sd
    python scripts/evaluate.py outputs/digits-dit-erase-seven --guidance_scales 1 2 4 7.5

For the digits SD each digit is prompted with its training captions and with held-out phrasings never used in
training or erasure; FA_paraphrases is FA on the latter alone. With --guidance_scales the pipeline is judged at each
scale and at its own default guidance (instead of --guidance_scale), and the worst FA and RA over them are reported:
an erasure that holds at one guidance may not at another. Installed as `sfr-evaluate`.

--nudenet scores nudity erasure on any text-to-image pipeline or export instead: the share of its samples from a
prompt file in which NudeNet finds a nude body part, with the detector's version, threshold, classes, seeds and the
prompts' hash (`--nudenet --help` lists its options; needs `pip install "sfr-diffusion[nudenet]"`):

    python scripts/evaluate.py outputs/stable-diffusion-v1-4-erase-nudity --nudenet --prompts nudity.csv \\
        --results_json nudity.json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from ..arguments import EvaluationArguments
from ..cli import (
    HelpFormatter,
    OneLineParser,
    add_dataclass_arguments,
    dataclass_flags,
    dataclass_from_args,
    number,
    run_command,
)
from ..export import erased_concepts, read_unlearning_config
from ..files import write_new_file
from ..forgetting import default_guidance_scale, sweep_guidance
from ..loading import load_pipeline
from ..nudity import NudeNetDetector, NudityArguments, read_prompt_rows, score_nudity, text_to_image_family
from ..presets import preset_for, resolve_model

PROG = "evaluate.py"
NUDENET_HELP = "Score nudity with NudeNet on a prompt file instead (`--nudenet --help` lists its options)."


def nudenet_parser() -> argparse.ArgumentParser:
    """The options of --nudenet: the pipeline, what is sampled and counted (:class:`NudityArguments`), the output."""
    parser = OneLineParser(prog=f"{PROG} --nudenet", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("pipeline", help="A text-to-image pipeline folder or export, or a Hub id.")
    parser.add_argument("--nudenet", action="store_true", help=NUDENET_HELP)
    add_dataclass_arguments(parser, NudityArguments, "nudity (NudeNet)")
    parser.add_argument("--device", default=None, help="Where to sample (default: cuda when available, else cpu).")
    parser.add_argument("--results_json", default=None, help="Also write the results, per image, to this new file.")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing --results_json.")
    parser.add_argument("--debug", action="store_true", help="Show the traceback of an error instead of one line.")
    return parser


def main_nudenet(argv) -> dict:
    """Check the prompt file, the output and the pipeline before sampling, score, write and print."""
    parser = nudenet_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        names = [text.split("=", 1)[0] for text in unknown if text.startswith("--")]
        own = sorted(dataclass_flags(NudityArguments) + ["--device", "--results_json", "--overwrite"])
        parser.error(f"--nudenet does not take {', '.join(names or unknown)}; its options are {', '.join(own)}")
    settings = dataclass_from_args(NudityArguments, args)
    rows = read_prompt_rows(settings)  # an empty or malformed prompt file fails here, before the model loads
    if args.results_json and Path(args.results_json).exists() and not args.overwrite:
        raise FileExistsError(f"--results_json {args.results_json} exists; pass --overwrite to replace it.")
    detector = NudeNetDetector()  # a missing extra fails here too
    path = resolve_model(args.pipeline)
    pipeline = load_pipeline(path)
    text_to_image_family(pipeline)
    pipeline.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    results = {"pipeline": args.pipeline, **score_nudity(pipeline, settings, rows=rows, detector=detector)}
    config = read_unlearning_config(path) if Path(path).is_dir() else None
    results["provenance"]["erased"] = erased_concepts(config) if config else None
    results["provenance"]["device"] = str(pipeline.device)
    if args.results_json:
        write_new_file(args.results_json, json.dumps(results, indent=2) + "\n", overwrite=args.overwrite)
    # The summary: per-image records and the seed of each prompt (given by seed_source) are in --results_json.
    summary = {k: v for k, v in results.items() if k != "per_image"}
    summary["provenance"] = {k: v for k, v in results["provenance"].items() if k != "seeds"}
    print(json.dumps(summary, indent=2))
    return results


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    chooser = OneLineParser(prog=PROG, add_help=False)
    chooser.add_argument("--nudenet", action="store_true")
    if chooser.parse_known_args(argv)[0].nudenet:
        return main_nudenet(argv)
    parser = OneLineParser(prog=PROG, description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("pipeline", help="A pipeline folder or export, or a bundled alias.")
    parser.add_argument("--nudenet", action="store_true", help=NUDENET_HELP)
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
    args, unknown = parser.parse_known_args(argv)
    nudenet_only = [text for text in unknown if text.split("=", 1)[0] in dataclass_flags(NudityArguments)]
    if nudenet_only:
        parser.error(f"{nudenet_only[0].split('=', 1)[0]} is an option of --nudenet (nudity scoring): add --nudenet")
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
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
