"""Print FA, RA and FID of a digits-world pipeline or export as JSON (installed as `sfr-evaluate`); with --nudenet,
the nudity rate of any text-to-image pipeline or export on a prompt file, scored by NudeNet.

    python scripts/evaluate.py outputs/digits-ddpm-erase-three     # the erased concept is read from the export
    python scripts/evaluate.py digits-ddpm --forget three
    python scripts/evaluate.py outputs/stable-diffusion-v1-4-erase-nudity --nudenet --prompts nudity.csv \
        --results_json nudity.json                                  # pip install "sfr-diffusion[nudenet]"

The command is `sfr_diffusion.commands.evaluate`.
"""

import sys

from sfr_diffusion.commands.evaluate import cli

if __name__ == "__main__":
    sys.exit(cli())
