"""See what erasure did: the original and the erased pipeline side by side, same seed, same settings.

    pip install -e ".[demo]"
    python app.py                                                  # the bundled digits world
    python app.py --erased outputs/digits-ddpm-erase-three        # the original: its export's base model
    python app.py --original digits-dit --erased outputs/digits-dit-erase-seven --port 7861
    python app.py --original path/to/sd-folder --erased outputs/sd-folder-erase-van_gogh --outputs_dir runs
    SFR_APP_AUTH=me:secret python app.py --host 0.0.0.0           # beyond this machine: only with a login

A launcher of :mod:`sfr_diffusion.app` (installed as the ``sfr-app`` command, same flags); `python app.py --help`
describes the page and every flag.
"""

import sys

from sfr_diffusion.app import cli

if __name__ == "__main__":
    sys.exit(cli())
