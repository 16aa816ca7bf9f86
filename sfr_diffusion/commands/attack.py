"""Attack an erased pipeline: can the forgotten concept be brought back? Prints the results as JSON.

    python scripts/attack.py outputs/digits-ddpm-erase-three                 # the concept is read from the export
    python scripts/attack.py outputs/digits-sd-erase-three --attack inversion --results_json attack.json
    python scripts/attack.py path/to/export --concept "Van Gogh" --images van_gogh_paintings/ --attack relearn

Attacks (see sfr_diffusion.attacks): `inversion` optimises the forgotten condition's embedding with every weight
frozen; `relearn` fine-tunes the denoiser on --attack_images images of the concept; `relearn_reset` does so after
resetting the concept's class-embedding rows to the mean of the others. ASR = FA after the attack, judged by the
model's preset (the digits world's classifier) at the evaluation settings below. Compare an export with retrain at
the same budget and seed. Installed as `sfr-attack`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

from ..arguments import EvaluationArguments
from ..attacks import ATTACKS, AttackArguments, run_attacks
from ..cli import HelpFormatter, OneLineParser, add_dataclass_arguments, dataclass_from_args, run_command
from ..data import load_image_dataset
from ..export import erased_concepts, read_unlearning_config
from ..files import write_new_file
from ..loading import load_pipeline
from ..presets import resolve_model
from ..version import __version__

PROG = "attack.py"


def erased_concept(path: Path) -> str | None:
    """The concept an export records as erased, or None for a folder that is not an export; an export of several
    concepts needs --concept to say which one to attack."""
    config = read_unlearning_config(path)
    if config is None:
        return None
    concepts = erased_concepts(config)
    if len(concepts) > 1:
        raise ValueError(f"{path} erased several concepts {concepts}: pass --concept with the one to attack.")
    return concepts[0]


def main(argv=None) -> dict:
    parser = OneLineParser(prog=PROG, description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("pipeline", help="An export or any pipeline folder (a retrained model too), or an alias.")
    parser.add_argument("--concept", default=None, help="The concept to bring back (default: the export's).")
    parser.add_argument(
        "--attack", action="append", choices=ATTACKS, default=None, help=f"Repeatable (default: all of {ATTACKS})."
    )
    parser.add_argument("--images", default=None, help="A folder of images of the concept (default: the preset's).")
    parser.add_argument("--results_json", default=None, help="Also write the results to this new file.")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing --results_json.")
    add_dataclass_arguments(parser, AttackArguments, "attack budget")
    add_dataclass_arguments(parser, EvaluationArguments, "judged samples")
    parser.add_argument("--debug", action="store_true", help="Show the traceback of an error instead of one line.")
    parser.set_defaults(eval_samples_per_class=20, forget_samples_per_class=100)  # ASR on 100 samples
    args = parser.parse_args(argv)
    arguments = dataclass_from_args(AttackArguments, args)
    evaluation = dataclass_from_args(EvaluationArguments, args)
    if args.results_json and Path(args.results_json).exists() and not args.overwrite:
        raise FileExistsError(f"--results_json {args.results_json} exists; pass --overwrite to replace it.")

    path = Path(resolve_model(args.pipeline))
    concept = args.concept if args.concept is not None else erased_concept(path)
    if concept is None:
        raise ValueError(f"{args.pipeline} is not an export that records its concept: pass --concept.")
    images = load_image_dataset(train_data_dir=args.images) if args.images else None
    pipeline = load_pipeline(path)
    pipeline.set_progress_bar_config(disable=True)
    results = run_attacks(
        pipeline, concept, args.attack or ATTACKS, arguments=arguments, images=images, evaluation=evaluation
    )
    results = {
        "pipeline": args.pipeline,
        "images": args.images or "the preset's",
        "sfr_diffusion_version": __version__,
        **results,
        "evaluation": asdict(evaluation),
    }
    text = json.dumps(results, indent=2)
    if args.results_json:
        write_new_file(args.results_json, text + "\n", overwrite=args.overwrite)
    summary = {k: {m: v[m] for m in ("ASR", "RA", "steps_to_half")} for k, v in results["attacks"].items()}
    print(json.dumps({"pipeline": args.pipeline, "concept": concept, **summary}, indent=2))
    return results


def cli(argv=None) -> int:
    return run_command(main, argv, PROG)


if __name__ == "__main__":
    sys.exit(cli())
