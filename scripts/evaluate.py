"""Print FA, RA and FID of a digits-world pipeline or export as JSON (installed as `sfr-evaluate`).

    python scripts/evaluate.py outputs/digits-ddpm-erase-three     # the erased concept is read from the export
    python scripts/evaluate.py digits-ddpm --forget three

The command is `sfr_diffusion.commands.evaluate`.
"""

import sys

from sfr_diffusion.commands.evaluate import cli

if __name__ == "__main__":
    sys.exit(cli())
