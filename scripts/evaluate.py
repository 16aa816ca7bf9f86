"""Print FA, RA and FID-digits of a digits-world pipeline (DDPM, DiT or SD) as JSON.

python scripts/evaluate.py outputs/digits-ddpm-erase-three                 # the erased class is read from the export
python scripts/evaluate.py digits-ddpm --forget three          # a bundled model: digits-ddpm, digits-dit, digits-sd

For the text-to-image SD each digit is prompted with its training captions and with held-out phrasings never used in
training or erasure; FA_paraphrases is FA on the latter alone.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sfr_diffusion.export import UNLEARNING_CONFIG_FILE
from sfr_diffusion.families import family_for
from sfr_diffusion.pipelines import load_pipeline
from sfr_diffusion.world import digit_of, digits_world_metrics, resolve_model


def resolve_digit(family, concept: str) -> int:
    if family.name != "sd":
        return family.resolve_class(concept)
    digit = digit_of(concept)
    if digit is None:
        raise ValueError(f"{concept!r} names no digit: the digits world judges digits only.")
    return digit


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", help="A digits-world pipeline folder, or digits-ddpm, digits-dit, digits-sd.")
    parser.add_argument("--forget", action="append", default=None, help="Erased digit: name or id (repeatable).")
    parser.add_argument("--samples_per_class", type=int, default=50)
    parser.add_argument("--guidance_scale", type=float, default=2.0)
    parser.add_argument("--num_inference_steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    path = Path(resolve_model(args.pipeline))
    pipeline = load_pipeline(path)
    forget = args.forget
    config_path = path / UNLEARNING_CONFIG_FILE
    if forget is None and config_path.exists():
        forget = [json.loads(config_path.read_text())["erased"]["concept"]]
    forget_ids = [resolve_digit(family_for(pipeline), item) for item in forget or []]
    metrics = digits_world_metrics(
        pipeline,
        forget_ids,
        samples_per_class=args.samples_per_class,
        guidance_scale=args.guidance_scale,
        num_inference_steps=args.num_inference_steps,
        seed=args.seed,
    )
    print(json.dumps({"pipeline": args.pipeline, "forget": forget_ids, **metrics}, indent=2))
    return metrics


if __name__ == "__main__":
    main()
