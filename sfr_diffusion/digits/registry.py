"""What the digits world ships: its model folders, their aliases, and how its samples are drawn by default."""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
# The DiT folder's vae/ is the shared VAE; sd/ holds only what is not shipped elsewhere (see `digits.bundled_path`).
# sd3/ is a complete StableDiffusion3Pipeline folder (its own copy of the VAE, with the shift factor SD3 reads).
SHIPPED = ("ddpm", "dit", "sd", "sd3", "judge")
BUNDLED_ALIASES = {"digits-ddpm": "ddpm", "digits-dit": "dit", "digits-sd": "sd", "digits-sd3": "sd3"}
# How the digits world is sampled and judged unless told otherwise (SPEC §2: 20 DDIM steps).
DEFAULT_GUIDANCE_SCALE = 2.0
DEFAULT_INFERENCE_STEPS = 20
IMAGE_SHAPE = (1, 8, 8)
# The caption sets a digits text-to-image model carries, by family: the SD's MiniLM encoder carries the held-out
# phrasings too; the SD3's frozen random encoders only the training captions (20.8% on held-out ones, see
# build_report.json), so its FA and RA are judged on those.
JUDGED_CAPTIONS = {"sd": ("train", "held_out"), "sd3": ("train",)}


def judged_captions(family) -> tuple[str, ...]:
    """The caption sets ("train", "held_out") a digits text-to-image pipeline of `family` is judged on."""
    return JUDGED_CAPTIONS.get(family.name, ("train", "held_out"))


def shipped_path(name: str) -> Path:
    """The folder shipped for a bundled model ("ddpm", "dit", "sd", "sd3" or "judge"); a clear error if it was never
    built."""
    if name not in SHIPPED:
        raise ValueError(f"Unknown bundled model {name!r}; available: {sorted(SHIPPED)}.")
    path = ASSETS_DIR / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; run `python -m sfr_diffusion.digits.build` to build it.")
    return path
