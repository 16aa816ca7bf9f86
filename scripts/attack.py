"""Attack an erased pipeline (conditioning inversion, relearning with and without the embedding reset) and print
the attack success rates as JSON (installed as `sfr-attack`).

    python scripts/attack.py outputs/digits-ddpm-erase-three
    python scripts/attack.py outputs/digits-sd-erase-three --attack inversion --results_json attack.json

The command is `sfr_diffusion.commands.attack`.
"""

import sys

from sfr_diffusion.commands.attack import cli

if __name__ == "__main__":
    sys.exit(cli())
