from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from .pipeline_class_conditional_ddpm import ClassConditionalDDPMPipeline

OUR_PIPELINES = {cls.__name__: cls for cls in (ClassConditionalDDPMPipeline,)}


def read_model_index(folder: str | Path) -> dict:
    """A pipeline folder's ``model_index.json``, or a `ValueError` that names the file and what is wrong with it."""
    index = Path(folder) / "model_index.json"
    try:
        values = json.loads(index.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{index} is not valid JSON ({error}); the pipeline folder is damaged.") from error
    if not isinstance(values, dict) or "_class_name" not in values:
        raise ValueError(f"{index} is not a diffusers model index (no _class_name).")
    return values


@contextlib.contextmanager
def quiet_progress(pipeline) -> Iterator[None]:
    """Silence a pipeline's per-call progress bar (sampling inside a longer task that shows its own), then restore
    the user's setting."""
    saved = dict(getattr(pipeline, "_progress_bar_config", {}))
    pipeline.set_progress_bar_config(disable=True)
    try:
        yield
    finally:
        pipeline.set_progress_bar_config(**saved)  # replaces the whole setting


__all__ = ["OUR_PIPELINES", "ClassConditionalDDPMPipeline", "quiet_progress", "read_model_index"]
