"""sfr-diffusion: erase classes and concepts from diffusion models with SFR-on.

>>> import sfr_diffusion
>>> pipe = sfr_diffusion.load_pipeline("digits-ddpm")
>>> result = sfr_diffusion.erase(pipe, "three")
>>> result.save_pretrained("outputs/digits-ddpm-erase-three")
"""

from .arguments import DataArguments, EvaluationArguments
from .erasure import ErasureResult, erase
from .loading import load_pipeline
from .methods import ESDConfig, FTConfig, GAConfig, RLConfig, SalUnConfig, SFROnConfig
from .pipelines import ClassConditionalDDPMPipeline
from .training import PhaseEvent, TrainingArguments
from .version import __version__

__all__ = [
    "ClassConditionalDDPMPipeline",
    "DataArguments",
    "ESDConfig",
    "ErasureResult",
    "EvaluationArguments",
    "FTConfig",
    "GAConfig",
    "PhaseEvent",
    "RLConfig",
    "SFROnConfig",
    "SalUnConfig",
    "TrainingArguments",
    "__version__",
    "erase",
    "load_pipeline",
]
