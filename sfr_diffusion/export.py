"""Write an erased pipeline as a standard diffusers folder, atomically, with its provenance and a model card."""

from __future__ import annotations

import inspect
import json
import os
import platform
import shutil
from pathlib import Path

import diffusers
import torch

import sfr_diffusion

UNLEARNING_CONFIG_FILE = "unlearning_config.json"
KEEP_ON_REPLACE = ("checkpoints", "logs")  # training state living inside output_dir survives a re-export


def versions() -> dict:
    return {
        "sfr_diffusion": sfr_diffusion.__version__,
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def save_pipeline(pipeline, folder: str | Path) -> None:
    """``save_pretrained`` plus the class names: DiTPipeline does not save its ``id2label``, but reloads it from
    ``model_index.json`` when it is there."""
    folder = Path(folder)
    pipeline.save_pretrained(folder, safe_serialization=True)
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    labels = getattr(pipeline, "labels", None)
    if labels and not index.get("id2label"):
        id2label: dict[str, list[str]] = {}
        for name, idx in labels.items():
            id2label.setdefault(str(idx), []).append(name)
        index["id2label"] = {idx: ", ".join(names) for idx, names in sorted(id2label.items(), key=lambda i: int(i[0]))}
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def save_pipeline_once(pipeline, target: Path) -> Path:
    """`save_pipeline` into a cache folder that is written once: staged, then renamed, so that concurrent processes
    and interrupted runs never see a half-written folder (if another process finished first, its folder is kept)."""
    staging = target.with_name(f"{target.name}.partial-{os.getpid()}")
    save_pipeline(pipeline, staging)
    try:
        staging.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _copy_custom_pipeline_code(pipeline, folder: Path) -> None:
    """Pipelines that diffusers does not ship travel with their code as ``pipeline.py`` (for ``custom_pipeline``)."""
    if hasattr(diffusers, type(pipeline).__name__):
        return
    shutil.copyfile(inspect.getsourcefile(type(pipeline)), folder / "pipeline.py")


def export_pipeline(
    pipeline,
    output_dir: str | Path,
    *,
    unlearning_config: dict,
    model_card: str,
    extra_files: dict[str, str | Path] | None = None,
) -> Path:
    """Save `pipeline` to `output_dir` so that it appears whole or not at all.

    Everything is written to a sibling ``.partial`` folder first; only a complete export replaces `output_dir`
    (whose ``checkpoints/`` folder, if any, is carried over). An interrupted run leaves the previous export intact.
    """
    output_dir = Path(output_dir).resolve()
    staging = output_dir.with_name(f".{output_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    try:
        save_pipeline(pipeline, staging)
        _copy_custom_pipeline_code(pipeline, staging)
        config = {**unlearning_config, "versions": versions()}
        (staging / UNLEARNING_CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str) + "\n")
        (staging / "README.md").write_text(model_card)
        for name, source in (extra_files or {}).items():
            shutil.copyfile(source, staging / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    previous = output_dir.with_name(f".{output_dir.name}.previous-{os.getpid()}")
    if output_dir.exists():
        output_dir.rename(previous)
    staging.rename(output_dir)
    if previous.exists():
        for name in KEEP_ON_REPLACE:
            if (previous / name).exists():
                (previous / name).rename(output_dir / name)
        shutil.rmtree(previous)
    return output_dir


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def render_model_card(
    *,
    base_model: str,
    erased: str,
    method_name: str,
    paper: str,
    steps: int,
    seconds: float,
    metrics_before: dict | None,
    metrics_after: dict | None,
    mask_statistics: dict | None,
    pipeline_class: str,
) -> str:
    """A diffusers-style model card: what was erased from which model, how, and what it measured."""
    rows = ""
    if metrics_before and metrics_after:
        for key in ("FA", "FA_paraphrases", "RA", "FID"):
            if key in metrics_after:
                rows += f"| {key} | {_fmt(metrics_before.get(key))} | {_fmt(metrics_after.get(key))} |\n"
    table = (
        "| metric | before | after |\n|---|---|---|\n" + rows
        if rows
        else "No evaluation was run (metrics need a judge for this model's classes).\n"
    )
    density = f"{mask_statistics['density']:.1%}" if mask_statistics else "no mask"
    if hasattr(diffusers, pipeline_class):
        loader = (
            f'from diffusers import {pipeline_class}\n\npipe = {pipeline_class}.from_pretrained("path/to/this/folder")'
        )
    else:
        # The pipeline's code travels in the folder as pipeline.py; diffusers asks for explicit trust to run it.
        loader = (
            "from diffusers import DiffusionPipeline\n\n"
            "pipe = DiffusionPipeline.from_pretrained(\n"
            '    "path/to/this/folder", custom_pipeline="path/to/this/folder", trust_remote_code=True\n)'
        )
    return f"""---
license: apache-2.0
base_model: {base_model}
library_name: diffusers
tags:
- diffusers
- machine-unlearning
- {method_name}
---

# {pipeline_class}: `{erased}` erased from `{base_model}`

This pipeline is `{base_model}` with **{erased}** erased by **{method_name}** using
[sfr-diffusion](https://pypi.org/project/sfr-diffusion/).

- Method: {method_name} — {paper}
- Iterations: {steps}; wall time: {seconds:.1f} s
- Saliency mask density (weights the forget step may move): {density}

## Evaluation

FA: share of samples generated for the erased class or concept still judged as it (lower is better);
FA_paraphrases: the same on prompt phrasings never used during erasure (text-to-image models).
RA: accuracy on the other classes. FID: Fréchet distance of judge features, other classes vs real images.

{table}
## Use

```python
{loader}
```

The full configuration, library versions and metrics are in `unlearning_config.json`.
"""
