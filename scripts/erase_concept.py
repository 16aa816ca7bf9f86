"""Erase a class or a concept from a diffusion pipeline and export a standard diffusers pipeline.

    accelerate launch -q scripts/erase_concept.py                     # "three" from the bundled digits DDPM
    accelerate launch -q scripts/erase_concept.py --help              # every option, its default and its help

The command itself is `sfr_diffusion.commands.erase` (installed as `sfr-erase`): it parses the options generated from
the library's dataclasses, calls `sfr_diffusion.erase()`, saves the export and prints a short summary.
"""

import sys

from sfr_diffusion.commands.erase import cli

if __name__ == "__main__":
    sys.exit(cli())
