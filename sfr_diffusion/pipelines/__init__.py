from __future__ import annotations

import json
from pathlib import Path

from diffusers import DiffusionPipeline

from .pipeline_class_conditional_ddpm import ClassConditionalDDPMPipeline

OUR_PIPELINES = {cls.__name__: cls for cls in (ClassConditionalDDPMPipeline,)}


def load_pipeline(path: str | Path, **kwargs) -> DiffusionPipeline:
    """Load any diffusers pipeline folder or Hub id, including this package's own pipeline classes."""
    index = Path(path) / "model_index.json"
    if index.exists():
        class_name = json.loads(index.read_text()).get("_class_name")
        if class_name in OUR_PIPELINES:
            return OUR_PIPELINES[class_name].from_pretrained(path, **kwargs)
    return DiffusionPipeline.from_pretrained(path, **kwargs)


__all__ = ["ClassConditionalDDPMPipeline", "load_pipeline"]
