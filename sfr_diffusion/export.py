"""Write an erased pipeline as a standard diffusers folder, atomically, with its provenance and a model card."""

from __future__ import annotations

import inspect
import json
import logging
import os
import platform
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import diffusers
import torch

from .curves import draw_curve
from .files import staging_path, write_once
from .saliency import MASK_FILE, Mask, save_mask
from .version import __version__

CURVE_FILE = "erasure_curve.png"  # FA/RA against iteration, when the run tracked them
UNLEARNING_CONFIG_FILE = "unlearning_config.json"  # written last: a folder that has it is a whole export of ours
STAGING_PREFIXES = ("partial", "previous")  # .NAME.partial-PID (being written), .NAME.previous-PID (being replaced)

logger = logging.getLogger(__name__)


def versions() -> dict:
    return {
        "sfr_diffusion": __version__,
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
    """`save_pipeline` into a cache folder that is written once (:func:`sfr_diffusion.files.write_once`)."""
    return write_once(target, lambda staging: save_pipeline(pipeline, staging))


def _copy_custom_pipeline_code(pipeline, folder: Path) -> None:
    """Pipelines that diffusers does not ship travel with their code as ``pipeline.py`` (for ``custom_pipeline``)."""
    if hasattr(diffusers, type(pipeline).__name__):
        return
    shutil.copyfile(inspect.getsourcefile(type(pipeline)), folder / "pipeline.py")


def is_export(path: str | Path) -> bool:
    """Whether `path` is a folder this package exported (it holds ``unlearning_config.json``, written last)."""
    return (Path(path) / UNLEARNING_CONFIG_FILE).is_file()


def check_output_dir(output_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Refuse, before any work, an `output_dir` that the export would have to replace without the right to.

    Accepted: a path that does not exist, an empty folder, or (with `overwrite`) an earlier export of ours. Anything
    else — a file, a folder of a user's files, the current folder or one above it — is never replaced. A swap that
    an earlier run left half done is finished or rolled back first (see `recover_interrupted_export`).
    """
    output_dir = Path(output_dir).expanduser().resolve()
    recover_interrupted_export(output_dir)
    if output_dir == Path.cwd().resolve() or output_dir in Path.cwd().resolve().parents:
        raise FileExistsError(
            f"--output_dir {output_dir} is the current folder or one above it; give a new folder for the export."
        )
    for parent in output_dir.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"--output_dir {output_dir}: {parent} is a file, not a folder.")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise PermissionError(f"--output_dir {output_dir}: {parent} is not writable.")
            break
    if not output_dir.exists() and not output_dir.is_symlink():
        return output_dir
    if not output_dir.is_dir() or output_dir.is_symlink():
        raise FileExistsError(f"--output_dir {output_dir} exists and is not a folder; it is never replaced.")
    if not any(output_dir.iterdir()):
        return output_dir
    if not is_export(output_dir):
        raise FileExistsError(
            f"--output_dir {output_dir} exists and is not an sfr-diffusion export (no {UNLEARNING_CONFIG_FILE}); it "
            "is never replaced: choose a new folder."
        )
    if not overwrite:
        raise FileExistsError(
            f"--output_dir {output_dir} holds an earlier export; pass --overwrite_output_dir to replace it, or "
            "choose a new folder."
        )
    return output_dir


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _leftovers(output_dir: Path) -> dict[str, list[Path]]:
    """Staging folders of exports to `output_dir` whose process is gone, by kind."""
    found: dict[str, list[Path]] = {kind: [] for kind in STAGING_PREFIXES}
    if not output_dir.parent.is_dir():
        return found
    for kind in STAGING_PREFIXES:
        for path in output_dir.parent.glob(f".{output_dir.name}.{kind}-*"):
            pid = path.name.rsplit("-", 1)[-1]
            if path.is_dir() and pid.isdigit() and not _process_alive(int(pid)):
                found[kind].append(path)
    return found


def recover_interrupted_export(output_dir: str | Path) -> None:
    """Finish or roll back an export that a killed process left between its steps, so `output_dir` holds a whole
    export (the old one or the new one) and no staging folder is left.

    The swap is: write ``.NAME.partial-PID`` (``unlearning_config.json`` last), rename the old export to
    ``.NAME.previous-PID``, rename the partial to ``NAME``, delete the previous one. Only folders with those names,
    of a process that no longer runs, are touched; a staging folder is deleted only once it holds a whole export
    (ours by `is_export`) or, for a partial, when ``NAME`` is whole: it can only be an unfinished copy we wrote.
    """
    output_dir = Path(output_dir).expanduser().resolve()
    leftovers = _leftovers(output_dir)
    partials = [p for p in leftovers["partial"] if is_export(p)]
    previous = [p for p in leftovers["previous"] if is_export(p)]
    try:
        if not output_dir.exists() and partials:  # killed between the two renames: the new export is whole
            partials[0].rename(output_dir)
            logger.warning("Finished an interrupted export: %s is now the new export.", output_dir)
        elif not output_dir.exists() and previous:  # the new export never got whole: roll back to the old one
            previous[0].rename(output_dir)
            previous = previous[1:]
            logger.warning("Rolled back an interrupted export: %s is the earlier export again.", output_dir)
    except FileNotFoundError:  # another process of the same launch has just recovered it
        logger.info("%s was recovered by another process.", output_dir)
    if not is_export(output_dir):
        return  # never delete staging folders beside something that is not a whole export of ours
    for leftover in [*leftovers["partial"], *previous]:
        try:
            shutil.rmtree(leftover)
        except FileNotFoundError:  # the other processes of a launch recover the same folder at the same time
            continue
        logger.info("Removed %s, left by an interrupted export.", leftover)


def export_pipeline(
    pipeline,
    output_dir: str | Path,
    *,
    unlearning_config: dict,
    model_card: str,
    saliency_mask: Mask | None = None,
    history: list[dict] | None = None,
    overwrite: bool = False,
    writer: Callable[[Path], None] | None = None,
) -> Path:
    """Save `pipeline` to `output_dir` so that it appears whole or not at all, and replace nothing but an export.

    Everything is written to a sibling ``.NAME.partial-PID`` folder first (``unlearning_config.json`` last); only a
    whole export then takes the name. An existing `output_dir` must be empty or, with `overwrite`, an earlier export
    (`check_output_dir`); a kill at any point leaves the old export or the new one under the name, and the next call
    finishes or rolls back the swap (`recover_interrupted_export`). `writer` writes the model into the staging folder
    instead of the full pipeline (a LoRA export: :func:`sfr_diffusion.adapters.save_lora_export`).
    """
    output_dir = check_output_dir(output_dir, overwrite=overwrite)
    staging = staging_path(output_dir, "partial")
    staging.parent.mkdir(parents=True, exist_ok=True)
    staging.mkdir()
    try:
        if writer is None:
            save_pipeline(pipeline, staging)
            _copy_custom_pipeline_code(pipeline, staging)
        else:
            writer(staging)
        (staging / "README.md").write_text(model_card)
        if saliency_mask is not None:
            save_mask(saliency_mask, staging / MASK_FILE)
        if history and any("FA" in record for record in history):
            draw_curve(history).save(staging / CURVE_FILE)
        config = {**unlearning_config, "versions": versions()}
        (staging / UNLEARNING_CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str) + "\n")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    previous = staging_path(output_dir, "previous")
    replacing = is_export(output_dir)
    if replacing:
        output_dir.rename(previous)
    staging.rename(output_dir)  # onto a missing name, or an empty folder (rename(2) replaces an empty directory)
    if replacing:
        shutil.rmtree(previous)
    return output_dir


def format_metric(value, digits: int = 3) -> str:
    """One metric for people: a float to `digits` decimals, a missing value as "–" (model cards, app, summaries)."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.{digits}f}"
    return str(value)


def read_unlearning_config(folder: str | Path) -> dict | None:
    """An export's ``unlearning_config.json``, or None for a pipeline folder that has none."""
    path = Path(folder) / UNLEARNING_CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error


def erased_concepts(config: dict) -> list[str]:
    """The concepts an export's ``unlearning_config.json`` records as erased (one, or several)."""
    erased = config.get("erased") or {}
    return list(erased.get("concepts") or ([erased["concept"]] if "concept" in erased else []))


def render_model_card(
    *,
    base_model: str,
    erased: str | Sequence[str],
    method_name: str,
    paper: str,
    steps: int,
    seconds: float,
    metrics_before: dict | None,
    metrics_after: dict | None,
    mask_statistics: dict | None,
    pipeline_class: str,
    lora: dict | None = None,
) -> str:
    """A diffusers-style model card: what was erased (one concept, or several) from which model, how, and what it
    measured (with several concepts, each one's FA where the evaluator gives ``FA_per_concept``). `lora` (rank,
    alpha, fused) says that LoRA adapters were trained: loaded onto the base pipeline, or fused into the weights."""
    erased = [erased] if isinstance(erased, str) else list(erased)
    rows = ""
    if metrics_before and metrics_after:
        for key in ("FA", "FA_paraphrases", "RA", "FID"):
            if key in metrics_after:
                rows += (
                    f"| {key} | {format_metric(metrics_before.get(key))} | {format_metric(metrics_after.get(key))} |\n"
                )
            if key == "FA" and len(erased) > 1:
                before, after = metrics_before.get("FA_per_concept") or {}, metrics_after.get("FA_per_concept") or {}
                for concept in [c for c in erased if c in after]:
                    values = f"{format_metric(before.get(concept))} | {format_metric(after[concept])}"
                    rows += f"| FA ({concept}) | {values} |\n"
    table = (
        "| metric | before | after |\n|---|---|---|\n" + rows
        if rows
        else "No evaluation was run (metrics need a judge for this model's classes).\n"
    )
    density = f"{mask_statistics['density']:.1%}" if mask_statistics else "no mask"
    title = ", ".join(f"`{concept}`" for concept in erased)
    bold = [f"**{concept}**" for concept in erased]
    bold = bold[0] if len(bold) == 1 else f"{', '.join(bold[:-1])} and {bold[-1]}"
    each_note = "" if len(erased) == 1 else "\nFA (name): the same for one of the erased concepts alone;"
    kind = "LoRA" if lora and not lora["fused"] else "pipeline"
    trained = "- Trained weights: all selected denoiser weights"
    if lora:
        trained = f"- Trained weights: LoRA adapters of rank {lora['rank']} (α {lora['alpha']:g})" + (
            ", fused into the weights: this folder is a full pipeline" if lora["fused"] else ""
        )
    if lora and not lora["fused"]:
        loader = (
            f"from diffusers import {pipeline_class}\n\n"
            f'pipe = {pipeline_class}.from_pretrained("{base_model}")\n'
            'pipe.load_lora_weights("path/to/this/folder")'
        )
        loader_note = "\nThis folder holds the LoRA adapters alone (`pytorch_lora_weights.safetensors`).\n"
    elif hasattr(diffusers, pipeline_class):
        loader = (
            f'from diffusers import {pipeline_class}\n\npipe = {pipeline_class}.from_pretrained("path/to/this/folder")'
        )
        loader_note = ""
    else:
        # diffusers ships no such pipeline: the installed package's class loads it and runs no code from the folder.
        loader = (
            "# pip install sfr-diffusion\n"
            f"from sfr_diffusion import {pipeline_class}\n\n"
            f'pipe = {pipeline_class}.from_pretrained("path/to/this/folder")'
        )
        loader_note = (
            "\nThe folder also carries the pipeline's code as `pipeline.py`, for `DiffusionPipeline.from_pretrained("
            "path, custom_pipeline=path, trust_remote_code=True)` without sfr-diffusion installed. That route **runs "
            "the folder's `pipeline.py`** on your machine: use it only for a folder whose source you trust.\n"
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

# {pipeline_class}: {title} erased from `{base_model}`

This {kind} is `{base_model}` with {bold} erased by **{method_name}** using
[sfr-diffusion](https://pypi.org/project/sfr-diffusion/).

- Method: {method_name} — {paper}
- Iterations: {steps}; wall time: {seconds:.1f} s
- Saliency mask density (weights the forget step may move): {density}
{trained}

## Evaluation

FA: share of samples generated for the erased class or concept still judged as it (lower is better);{each_note}
FA_paraphrases: the same on prompt phrasings never used during erasure (text-to-image models).
RA: accuracy on the other classes. FID: Fréchet distance of judge features, other classes vs real images.

{table}
## Use

```python
{loader}
```
{loader_note}
The full configuration, library versions and metrics are in `unlearning_config.json`.
"""
