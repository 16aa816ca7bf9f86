from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from diffusers import DiffusionPipeline

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


def looks_local(path: str | Path) -> bool:
    """A path the user means as a folder on this machine rather than a Hub id ("org/name")."""
    text = str(path)
    return Path(text).exists() or text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text


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


def load_pipeline(path: str | Path, **kwargs) -> DiffusionPipeline:
    """Load any diffusers pipeline folder or Hub id, including this package's own pipeline classes, or a bundled
    model by its alias (``digits-ddpm``, ``digits-dit``, ``digits-sd``; see :func:`sfr_diffusion.presets.resolve_model`).

    A custom-pipeline folder (``_class_name`` a ``[module, class]`` list) of one of our classes loads with the
    installed class; any other custom code is refused rather than run.
    """
    from ..presets import resolve_model

    path = resolve_model(path)
    folder = Path(path).expanduser()
    if looks_local(path):
        if not (folder / "model_index.json").is_file():
            raise ValueError(f"{path} is not a diffusers pipeline folder: it has no model_index.json.")
        class_name = read_model_index(folder)["_class_name"]
        if isinstance(class_name, list):  # written by a custom pipeline: [module, class]
            class_name = class_name[-1] if class_name else None
            if class_name not in OUR_PIPELINES:
                raise ValueError(
                    f"{path} is a custom pipeline ({class_name}) that needs its own code to load; sfr-diffusion does "
                    "not run code from a model folder. Load it with DiffusionPipeline.from_pretrained(path, "
                    "custom_pipeline=..., trust_remote_code=True) if you trust that code."
                )
        if class_name in OUR_PIPELINES:
            return OUR_PIPELINES[class_name].from_pretrained(folder, **kwargs)
        return DiffusionPipeline.from_pretrained(folder, **kwargs)
    if "/" not in str(path):
        raise ValueError(f"{path!r} is neither a pipeline folder on this machine nor a Hub id (org/name).")
    return DiffusionPipeline.from_pretrained(path, **kwargs)


__all__ = ["ClassConditionalDDPMPipeline", "load_pipeline", "quiet_progress", "read_model_index"]
