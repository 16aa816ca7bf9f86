"""sfr-diffusion: erase classes and concepts from diffusion models with SFR-on."""

__version__ = "0.1.0"

from .pipelines import ClassConditionalDDPMPipeline

__all__ = ["ClassConditionalDDPMPipeline", "__version__"]
