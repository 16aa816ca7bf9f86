"""Print FA, RA and FID-digits of a digits-world pipeline as JSON.

python scripts/evaluate.py outputs/erase-three                 # the erased class is read from the export
python scripts/evaluate.py sfr_diffusion/assets/digits/ddpm --forget three
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sfr_diffusion.export import UNLEARNING_CONFIG_FILE
from sfr_diffusion.families import family_for
from sfr_diffusion.pipelines import load_pipeline
from sfr_diffusion.world import digits_world_metrics


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", help="A digits-world pipeline folder.")
    parser.add_argument("--forget", action="append", default=None, help="Erased class name or id (repeatable).")
    parser.add_argument("--samples_per_class", type=int, default=50)
    parser.add_argument("--guidance_scale", type=float, default=2.0)
    parser.add_argument("--num_inference_steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    pipeline = load_pipeline(args.pipeline)
    forget = args.forget
    config_path = Path(args.pipeline) / UNLEARNING_CONFIG_FILE
    if forget is None and config_path.exists():
        forget = [json.loads(config_path.read_text())["erased"]["class_id"]]
    family = family_for(pipeline)
    forget_ids = [family.resolve_class(item) for item in forget or []]
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
