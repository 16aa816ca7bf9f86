"""See what erasure did: the original and the erased pipeline side by side, same seed, same settings.

    pip install "sfr-diffusion[demo]"
    sfr-app                                                        # the bundled digits world (or: python app.py)
    sfr-app --erased outputs/digits-ddpm-erase-three               # the original: its export's base model
    sfr-app --original digits-dit --erased outputs/digits-dit-erase-seven --port 7861
    sfr-app --original path/to/sd-folder --erased outputs/sd-folder-erase-van_gogh --outputs_dir runs

**Compare** samples both pipelines with one seed: a class, or a grid of all classes (each cell labelled with its
class), for class-conditional models (DDPM, DiT); a prompt for text-to-image ones (Stable Diffusion, SDXL, SD3,
Flux). Beside the images it shows what the erased model's ``unlearning_config.json`` records: what was erased, the
method, the iterations, FA/RA before and after.
**Erase** runs :func:`sfr_diffusion.erase` in this process with a live progress bar and FA/RA curve, saves the result
and offers the export for comparison. Pipelines are local diffusers folders or the bundled digits-world models
(digits-ddpm, digits-dit, digits-sd); erased outputs are found in ``outputs/*/unlearning_config.json`` and every
--outputs_dir.

The app writes only into the first outputs folder (``outputs/`` unless --outputs_dir says otherwise): the Erase tab
takes an export *name*, not a path (letters, digits, ``.``, ``_``, ``-`` and spaces; no leading ``.``; empty:
``app-<model>-erase-<concept>``). An existing export of that name is replaced only when "Replace an existing export
of the same name" is ticked; anything else already there (a file, a folder of your own) is never replaced.

The server binds to 127.0.0.1 unless --host says otherwise. Anyone who reaches the page can run erasures and write
to disk, so serve it beyond this machine (--host 0.0.0.0, --share) only with a login:

    SFR_APP_AUTH=me:secret sfr-app --host 0.0.0.0                # or --auth me:secret (visible to other local users)
"""

from __future__ import annotations

import argparse
import html
import ipaddress
import json
import logging
import math
import os
import queue
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

try:  # an optional extra: only this module needs it, the package's __init__ never imports it
    import gradio as gr
except ImportError as error:
    raise ImportError('The app needs Gradio: pip install "sfr-diffusion[demo]"') from error
import pandas as pd
import torch
from PIL import Image, ImageDraw

from .adapters import LORA_WEIGHTS_FILE
from .arguments import EvaluationArguments
from .digits import DEFAULT_GUIDANCE_SCALE, DEFAULT_INFERENCE_STEPS
from .erasure import ErasureResult, erase
from .export import UNLEARNING_CONFIG_FILE, erased_concepts, format_metric, is_export, read_unlearning_config
from .families import DiffusionFamily, family_for
from .files import default_export_name
from .loading import is_lora_export, load_pipeline
from .pipelines import quiet_progress
from .presets import base_model_name, bundled_aliases, loadable_name, resolve_model
from .training import PhaseEvent, TrainingArguments

logger = logging.getLogger(__name__)

DEFAULT_ORIGINAL = "digits-ddpm"
DEFAULT_OUTPUTS_DIR = "outputs"
# How an export names a bundled base model (sfr_diffusion/commands/erase.py writes the same): the app finds the
# original of an export through it.
ALL_CLASSES = "all classes (grid)"
MAX_GRID_CLASSES = 100
GRID_COLUMNS = 5
DISPLAY_SIZE = 256  # small images (the digits world's 8×8) are upscaled, nearest, to about this many pixels
GRID_CELL_SIZE = 64
GRID_GAP = 2
GRID_LABEL_HEIGHT = 14  # the band under each grid cell that holds its class name (PIL's default font is ~11 px)
CURVE_METRICS = {"FA": "#d62728", "RA": "#1f77b4", "FA_paraphrases": "#ff7f0e"}  # metric → its line's colour
METRIC_COLUMNS = {"FA": "FA ↓", "FA_paraphrases": "FA, unseen phrasings ↓", "RA": "RA ↑", "FID": "FID-digits ↓"}
# What a user can get wrong (a path, a pair, a class, a prompt, a missing package): shown in the page, not a crash.
USER_ERRORS = (ValueError, OSError, ImportError)
# One erasure at a time in this process: erase() seeds torch's global generators and accelerate's state is
# process-wide, so two erasures at once would draw each other's batches. Each builds its own Accelerator.
ERASE_LOCK = threading.Lock()
# The Erase tab takes a folder name inside the outputs folder, never a path (issue "never lose a user's data").
EXPORT_NAME_CHARACTERS = re.compile(r"[A-Za-z0-9._ -]+")
EXPORT_NAME_RULE = "letters, digits, '.', '_', '-' and spaces, not starting with '.'"
MAX_EXPORT_NAME_LENGTH = 100  # room left for the exporter's ".NAME.partial-PID" staging names in 255 bytes
REPLACE_LABEL = "Replace an existing export of the same name"
AUTH_ENV = "SFR_APP_AUTH"  # USER:PASSWORD, read when --auth is not given


def user_error(error: Exception) -> gr.Error:
    """The message for the page, without a server-side traceback: the user's input was wrong, not the app."""
    return gr.Error(str(error), print_exception=False)


# --- pipelines -------------------------------------------------------------------------------------------------------


def pipeline_folder(name_or_path: str) -> Path:
    """A bundled model's folder, a local diffusers pipeline folder or a LoRA export; anything else is a readable
    error."""
    text = (name_or_path or "").strip()
    if not text:
        raise ValueError("No pipeline given: pick one from the list or type a pipeline folder.")
    folder = Path(resolve_model(text)).expanduser().resolve()
    if not (folder / "model_index.json").is_file() and not is_lora_export(folder):
        raise ValueError(
            f"{text!r} is not a pipeline: expected a bundled model ({', '.join(bundled_aliases())}), a diffusers "
            "pipeline folder with a model_index.json or an export of LoRA weights."
        )
    return folder


def written_at(folder: Path) -> int:
    """When the file that makes `folder` loadable was written (``model_index.json``, or a LoRA export's weights)."""
    marker = folder / ("model_index.json" if (folder / "model_index.json").is_file() else LORA_WEIGHTS_FILE)
    return marker.stat().st_mtime_ns


@dataclass
class LoadedPipeline:
    pipeline: object
    family: DiffusionFamily
    # Schedulers keep per-call state (their timesteps), so one pipeline samples for one request at a time.
    lock: threading.Lock = field(default_factory=threading.Lock)


class PipelineCache:
    """Loads each pipeline folder once; thread safe.

    Entries are keyed by the resolved folder and the time its ``model_index.json`` (or LoRA weights file) was
    written: an export that an erasure replaced (exports are written whole and renamed into place) is loaded again,
    anything else never.
    """

    def __init__(self, device: str | None = None):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.loads: Counter[str] = Counter()  # folder → times loaded
        self._entries: dict[str, tuple[int, LoadedPipeline]] = {}
        self._lock = threading.Lock()

    def get(self, name_or_path: str) -> LoadedPipeline:
        folder = pipeline_folder(name_or_path)
        key, stamp = str(folder), written_at(folder)
        with self._lock:
            cached = self._entries.get(key)
            if cached is None or cached[0] != stamp:
                pipeline = load_pipeline(folder)
                family = family_for(pipeline)  # an unsupported pipeline is a ValueError naming the supported ones
                pipeline.to(self.device)
                cached = self._entries[key] = (stamp, LoadedPipeline(pipeline, family))
                self.loads[key] += 1
            return cached[1]


def class_choices(loaded: LoadedPipeline) -> list[str]:
    family = loaded.family
    names = family.class_names() or {i: str(i) for i in range(family.num_classes())}
    return [ALL_CLASSES, *(names[i] for i in sorted(names))]


def check_compatible(original: LoadedPipeline, erased: LoadedPipeline) -> None:
    """Same family and same image shape, so that the same seed draws the same starting noise for both."""
    a, b = original.family, erased.family
    if a.name != b.name or a.image_shape != b.image_shape:
        raise ValueError(
            f"Incompatible pipelines: the original is a {a.name} model of {shape_text(a.image_shape)} images, the "
            f"erased one a {b.name} model of {shape_text(b.image_shape)} images. Compare an erased pipeline with "
            "the model it was erased from."
        )


def shape_text(shape: Sequence[int]) -> str:
    return "×".join(str(s) for s in shape)


def conditions(loaded: LoadedPipeline, class_name: str, prompt: str) -> list:
    """What the pipeline is called with: the prompt, one class id, or every class id (a grid)."""
    if loaded.family.text_conditioned:
        if not (prompt or "").strip():
            raise ValueError("Type a prompt: this is a text-to-image model (e.g. 'a handwritten digit three').")
        return [prompt.strip()]
    if not (class_name or "").strip():
        raise ValueError(f"Pick a class, or {ALL_CLASSES!r}.")
    if class_name == ALL_CLASSES:
        count = loaded.family.num_classes()
        if count > MAX_GRID_CLASSES:
            raise ValueError(f"This model has {count} classes, too many for a grid (at most {MAX_GRID_CLASSES}).")
        return list(range(count))
    return [loaded.family.resolve_class(class_name)]  # an unknown name is an error listing the valid ones


def sample(loaded: LoadedPipeline, inputs: list, *, seed: int, steps: int, guidance: float) -> list[Image.Image]:
    # A CPU generator, so that the starting noise is the same for both pipelines on any device.
    generator = torch.Generator().manual_seed(seed)
    with loaded.lock, quiet_progress(loaded.pipeline), torch.inference_mode():
        output = loaded.pipeline(
            inputs,
            guidance_scale=guidance,
            num_inference_steps=steps,
            generator=generator,
            output_type="pil",
            **loaded.family.sampling_kwargs(),  # Flux records no resolution: the family's
        )
    return output.images


def upscale(image: Image.Image, size: int) -> Image.Image:
    factor = max(1, size // max(image.size))
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def fitted(draw: ImageDraw.ImageDraw, text: str, width: int) -> str:
    """`text`, shortened with '...' until it fits `width` pixels in the draw's font."""
    if draw.textlength(text) <= width:
        return text
    while text and draw.textlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


def display(images: list[Image.Image], labels: Sequence[str] | None = None) -> Image.Image:
    """One image upscaled for the page, or several in a grid (class order, row by row), each cell with its label
    (its class name) drawn under it when `labels` are given."""
    if len(images) == 1:
        return upscale(images[0], DISPLAY_SIZE).convert("RGB")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(labels)} labels for {len(images)} images.")
    cells = [upscale(image, GRID_CELL_SIZE).convert("RGB") for image in images]
    width, height = cells[0].size
    row_height = height + (GRID_LABEL_HEIGHT if labels is not None else 0)
    columns = min(GRID_COLUMNS, len(cells))
    rows = math.ceil(len(cells) / columns)
    size = (columns * (width + GRID_GAP) - GRID_GAP, rows * (row_height + GRID_GAP) - GRID_GAP)
    grid = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(grid)  # PIL's default font
    for index, cell in enumerate(cells):
        row, column = divmod(index, columns)
        x, y = column * (width + GRID_GAP), row * (row_height + GRID_GAP)
        grid.paste(cell, (x, y))
        if labels is not None:
            text = fitted(draw, str(labels[index]), width)
            draw.text((x + width / 2, y + height + GRID_LABEL_HEIGHT / 2), text, fill="black", anchor="mm")
    return grid


# --- erased exports and their cards ----------------------------------------------------------------------------------


def original_of(config: dict | None) -> str | None:
    """The model an export was erased from, as the app names it (a bundled alias or a path)."""
    base = (config or {}).get("base_model")
    if not isinstance(base, str):
        return None
    return loadable_name(base)


@dataclass(frozen=True)
class ErasedExport:
    path: str
    config: dict

    @property
    def label(self) -> str:
        concepts = ", ".join(map(repr, erased_concepts(self.config))) or "?"
        base = original_of(self.config) or "?"
        return f"{self.path}: {concepts} erased from {base} ({self.config.get('method', '?')})"


def find_exports(outputs_dirs: Sequence[str | Path]) -> list[ErasedExport]:
    """Erased outputs (folders with an ``unlearning_config.json``) in `outputs_dirs`, newest first."""
    found: dict[Path, ErasedExport] = {}
    for directory in outputs_dirs:
        for config_path in Path(directory).glob(f"*/{UNLEARNING_CONFIG_FILE}"):
            try:
                config = json.loads(config_path.read_text())
            except (OSError, json.JSONDecodeError) as error:  # one broken folder must not hide the others
                logger.warning("Skipping %s: %s", config_path.parent, error)
                continue
            found.setdefault(config_path.parent.resolve(), ErasedExport(str(config_path.parent), config))
    return sorted(found.values(), key=lambda e: -(Path(e.path) / UNLEARNING_CONFIG_FILE).stat().st_mtime)


def export_card(config: dict | None, path: str) -> str:
    """Markdown: what the export's config says was erased, how, and FA/RA before and after."""
    if config is None:
        return (
            f"`{path}` has no `{UNLEARNING_CONFIG_FILE}`: not an sfr-diffusion export, no record of what was erased."
        )
    erased = config.get("erased") or {}
    seconds = config.get("seconds") or {}
    facts = [
        f"**Erased** {', '.join(map(repr, erased_concepts(config))) or '?'}",
        f"**from** {config.get('base_model', '?')}",
        f"**method** {config.get('method', '?')} ({config.get('family', '?')})",
        f"**iterations** {config.get('steps', '?')}",
    ]
    if erased.get("anchor_concept") is not None:
        facts.insert(1, f"**remapped to** {erased['anchor_concept']!r}")
    if seconds:
        facts.append(f"**time** {sum(seconds.values()):.1f} s")
    lines = [f"#### `{path}`", " · ".join(facts), ""]
    metrics = config.get("metrics") or {}
    rows = {when: metrics.get(when) for when in ("before", "after") if metrics.get(when)}
    if rows:
        keys = [k for k in METRIC_COLUMNS if any(k in row for row in rows.values())]
        lines.append("| | " + " | ".join(METRIC_COLUMNS[k] for k in keys) + " |")
        lines.append("|---|" + "---|" * len(keys))
        for when, row in rows.items():
            lines.append(f"| {when} | " + " | ".join(format_metric(row.get(k)) for k in keys) + " |")
        lines += ["", "FA: share of the erased class's samples still judged as it. RA: accuracy on the other classes."]
    else:
        lines.append("FA/RA were not measured (a run with `--skip_eval`, or a model outside the digits world).")
    return "\n".join(lines)


# --- erasure in this process -----------------------------------------------------------------------------------------


def progress_html(done: int, total: int, text: str) -> str:
    bar = f'<progress value="{done}" max="{total}" style="width: 100%; accent-color: var(--color-accent)"></progress>'
    return f"{bar}<div>{html.escape(text)}</div>"


def export_name(text: str | None, default: str) -> str:
    """The Erase tab's export name, checked before any work: a plain folder name, or `default` when empty."""
    name = (text or "").strip()
    if not name:
        return default
    if "/" in name or "\\" in name:
        raise ValueError(f"Export name {name!r} is a path: give a folder name ({EXPORT_NAME_RULE}).")
    if name in (".", ".."):
        raise ValueError(f"Export name {name!r} is the outputs folder or the one above it: give a new folder name.")
    if name.startswith("."):
        # Hidden names are also the exporter's staging folders (.NAME.partial-PID), which it may delete.
        raise ValueError(f"Export name {name!r} starts with '.', which hides it: accepted are {EXPORT_NAME_RULE}.")
    rejected = sorted({character for character in name if not EXPORT_NAME_CHARACTERS.fullmatch(character)})
    if rejected:
        raise ValueError(f"Export name {name!r} contains {''.join(rejected)!r}: accepted are {EXPORT_NAME_RULE}.")
    if len(name) > MAX_EXPORT_NAME_LENGTH:
        raise ValueError(f"Export name is {len(name)} characters long: at most {MAX_EXPORT_NAME_LENGTH} are accepted.")
    return name


def check_export_target(target: Path, *, replace: bool) -> None:
    """Refuse, before the run, an export that would replace something without the user's consent.

    Only an earlier export of ours (it has ``unlearning_config.json``) is ever replaced, and only with the
    Replace box ticked; a file, a link or a folder of anything else is never touched, ticked or not.
    ``ErasureResult.save_pretrained`` checks again when it writes; this check makes the page's answer immediate.
    """
    if target.is_symlink() or (target.exists() and not is_export(target)):
        raise FileExistsError(
            f"{target} exists and is not an sfr-diffusion export; choose another name (without an "
            f"{UNLEARNING_CONFIG_FILE} it is never replaced, ticked or not)."
        )
    if target.exists() and not replace:
        raise FileExistsError(
            f"{target} holds an earlier export: tick {REPLACE_LABEL!r} to replace it, or choose another name."
        )


def failure_text(error: BaseException | None) -> str:
    """One line for the page: the message of a user error, the type too for anything else."""
    if error is None:
        return "it returned no result (see the server log)."
    if isinstance(error, USER_ERRORS):
        return str(error)
    return f"{type(error).__name__}: {error}"


def curve_frame(history: list[dict]) -> pd.DataFrame | None:
    """The evaluation history in long form (step, metric, value), for a line per metric; None while it is empty.

    None rather than an empty frame: Gradio's line plot draws no lines into a plot that started from an empty frame.
    """
    rows = [
        {"step": record["step"], "metric": key, "value": float(record[key])}
        for record in history
        for key in CURVE_METRICS
        if record.get(key) is not None
    ]
    return pd.DataFrame(rows, columns=["step", "metric", "value"]) if rows else None


def erase_and_export(
    base_name: str,
    concept: str,
    output: Path,
    *,
    replace: bool,
    training: TrainingArguments,
    evaluate: EvaluationArguments | bool,
    callbacks: Sequence[Callable[[PhaseEvent], None]] = (),
) -> ErasureResult:
    """Erase `concept` from a fresh copy of `base_name` (never the cached one the Compare tab samples) and save it
    as `output`, replacing an earlier export there only with `replace`."""
    pipeline = load_pipeline(pipeline_folder(base_name))
    with quiet_progress(pipeline):
        result = erase(
            pipeline,
            concept,
            training=training,
            evaluate=evaluate,
            callbacks=callbacks,
            base_model=base_model_name(base_name),
        )
    result.save_pretrained(output, overwrite=replace)
    return result


@dataclass
class ErasureRun:
    """One erasure in a worker thread (``work(on_step)``); its step events arrive in a queue for the page to stream.

    Runs hold ERASE_LOCK, so they follow each other; each builds its own ``Accelerator`` (inside ``erase()``).
    """

    work: Callable[[Callable[[PhaseEvent], None]], ErasureResult]
    events: queue.Queue = field(default_factory=queue.Queue)
    result: ErasureResult | None = None
    error: BaseException | None = None
    thread: threading.Thread | None = None

    def start(self) -> ErasureRun:
        self.thread = threading.Thread(target=self._work, name="erasure", daemon=True)
        self.thread.start()
        return self

    def _work(self) -> None:
        with ERASE_LOCK:
            try:
                self.result = self.work(self._on_step)
            except USER_ERRORS as error:  # erase() refuses bad input by raising: one line, no traceback
                logger.warning("Erasure refused: %s", error)
                self.error = error
            except Exception as error:  # whatever else the run raised is shown in the page; the app keeps serving
                logger.exception("Erasure failed")
                self.error = error

    def _on_step(self, event: PhaseEvent) -> None:
        self.events.put((event.step, [dict(record) for record in event.history]))

    def updates(self, poll_seconds: float = 0.5) -> Iterator[tuple[int, list[dict]] | None]:
        """The latest (step, history) whenever there is news, None on a quiet poll; ends when the run does."""
        while self.thread.is_alive() or not self.events.empty():
            try:
                latest = self.events.get(timeout=poll_seconds)
            except queue.Empty:
                yield None
                continue
            while not self.events.empty():
                latest = self.events.get_nowait()
            yield latest
        self.thread.join()


# --- the page's event handlers ---------------------------------------------------------------------------------------


def control_settings(loaded: LoadedPipeline, class_name: str, prompt: str, config: dict | None):
    """Class picker for class-conditional models, prompt box for text-to-image ones (as component kwargs)."""
    if loaded.family.text_conditioned:
        forget_prompts = ((config or {}).get("erased") or {}).get("forget_prompts") or [""]
        return {"visible": False}, {"visible": True, "value": prompt or forget_prompts[0]}
    choices = class_choices(loaded)
    value = class_name if class_name in choices else ALL_CLASSES
    return {"visible": True, "choices": choices, "value": value}, {"visible": False}


class AppHandlers:
    """The page's event handlers, around one pipeline cache. New erasures are written to ``outputs_dirs[0]``."""

    def __init__(
        self,
        cache: PipelineCache,
        outputs_dirs: Sequence[str | Path] = (DEFAULT_OUTPUTS_DIR,),
        original: str | None = None,
        erased: Sequence[str] = (),
    ):
        self.cache = cache
        self.outputs_dirs = [Path(d) for d in outputs_dirs] or [Path(DEFAULT_OUTPUTS_DIR)]
        self.original = original
        self.given_erased = [str(e) for e in erased]

    def erased_choices(self) -> list[tuple[str, str]]:
        found = {e.path: e.label for e in find_exports(self.outputs_dirs)}
        given = [(path, found.pop(path, path)) for path in self.given_erased]
        return [(label, path) for path, label in given + list(found.items())]

    def original_choices(self, extra: Sequence[str | None] = ()) -> list[str]:
        exported = (original_of(e.config) for e in find_exports(self.outputs_dirs))
        names = [self.original, *extra, *bundled_aliases(), *exported]
        return list(dict.fromkeys(n for n in names if n))

    def card_and_controls(self, original_name: str, erased_path: str, class_name: str, prompt: str):
        if not (erased_path or "").strip():
            card = "No erased pipeline yet: run one in the **Erase** tab (or `scripts/erase_concept.py`)."
            return card, *control_settings(self.cache.get(original_name), class_name, prompt, None)
        config = read_unlearning_config(pipeline_folder(erased_path))
        controls = control_settings(self.cache.get(erased_path), class_name, prompt, config)
        return export_card(config, erased_path), *controls

    def initial_state(self) -> dict:
        """What the page opens with: the CLI's erased pipeline or the newest export, and the model it was erased
        from; an error (e.g. an export whose base model is gone) is shown in the card and the page still opens."""
        exports = self.erased_choices()
        erased_value = exports[0][1] if exports else None
        try:
            config = read_unlearning_config(erased_value) if erased_value else None
        except USER_ERRORS:
            config = None
        original_value = self.original or original_of(config) or DEFAULT_ORIGINAL
        try:
            card, class_settings, prompt_settings = self.card_and_controls(
                original_value, erased_value or "", ALL_CLASSES, ""
            )
        except USER_ERRORS as error:
            card, class_settings, prompt_settings = f"**Error:** {error}", {}, {"visible": False}
        return {
            "exports": exports,
            "erased": erased_value,
            "original": original_value,
            "card": card,
            "class_settings": class_settings,
            "prompt_settings": prompt_settings,
        }

    def describe(self, original_name: str, erased_path: str, class_name: str, prompt: str):
        """The erased model's card and the controls its family needs."""
        try:
            card, class_settings, prompt_settings = self.card_and_controls(
                original_name, erased_path, class_name, prompt
            )
        except USER_ERRORS as error:
            raise user_error(error) from error
        return card, gr.update(**class_settings), gr.update(**prompt_settings)

    def pick_erased(self, erased_path: str, original_name: str):
        """Picking an erased export selects the model it was erased from."""
        try:
            base = original_of(read_unlearning_config(pipeline_folder(erased_path)))
        except USER_ERRORS:
            base = None  # a bad path is reported by `describe`
        return gr.update(choices=self.original_choices([base]), value=base or original_name)

    def refresh(self, original_name: str, erased_path: str):
        choices = self.erased_choices()
        paths = [path for _, path in choices]
        value = erased_path or (paths[0] if paths else None)
        original_update = gr.update(choices=self.original_choices([original_name]), value=original_name)
        return original_update, gr.update(choices=choices, value=value)

    def compare(self, original_name, erased_path, class_name, prompt, seed, steps, guidance):
        """Both pipelines, same inputs, same seed; a grid of all classes has each cell labelled."""
        try:
            if not (erased_path or "").strip():
                raise ValueError("Pick an erased pipeline, or run an erasure in the Erase tab first.")
            seed, steps, guidance = int(seed if seed is not None else 0), int(steps), float(guidance)
            if seed < 0 or steps < 1:
                raise ValueError(f"The seed must be >= 0 and the steps >= 1, got seed {seed} and {steps} steps.")
            before, after = self.cache.get(original_name), self.cache.get(erased_path)
            check_compatible(before, after)
            images = []
            for loaded in (before, after):
                inputs = conditions(loaded, class_name, prompt)
                labels = [loaded.family.condition_name(c) for c in inputs] if len(inputs) > 1 else None
                images.append(display(sample(loaded, inputs, seed=seed, steps=steps, guidance=guidance), labels))
            config = read_unlearning_config(pipeline_folder(erased_path))
        except USER_ERRORS as error:
            raise user_error(error) from error
        if after.family.text_conditioned:
            what = f"prompt {prompt.strip()!r}"
        else:
            what = "all classes" if class_name == ALL_CLASSES else f"class {class_name!r}"
        settings = f"Original `{original_name}` (left) and erased (right): {what}, seed {seed}, {steps} steps, "
        settings += f"guidance {guidance:g}."
        base = original_of(config)
        if base is not None and base != original_name.strip():
            settings += f" Note: this export was erased from {base}, not from {original_name}."
        return *images, export_card(config, erased_path) + "\n\n" + settings

    # A gr.Progress() default is how Gradio hands a handler its progress bar (outside Gradio it does nothing).
    def erase(self, base_name, concept, steps, eval_every, eval_samples, name, replace, progress=gr.Progress()):  # noqa: B008
        """Runs a short erasure, streaming its progress and FA/RA curve; offers the export for comparison.

        It writes only ``outputs_dirs[0] / name``, and replaces only an earlier export there, with `replace`.
        """
        concept = (concept or "").strip()
        steps, eval_every, eval_samples = int(steps), int(eval_every), int(eval_samples)
        try:
            pipeline_folder(base_name)
            if not concept:
                raise ValueError("Type what to erase: a class name or id (e.g. 'three'), or a concept for SD models.")
            if steps < 1 or eval_every < 0 or eval_samples < 0:
                raise ValueError("Iterations must be >= 1; evaluation interval and samples >= 0.")
            base_name = base_name.strip()
            default_name = f"app-{default_export_name(base_name, concept)}"
            output = self.outputs_dirs[0] / export_name(name, default_name)
            check_export_target(output, replace=bool(replace))
            # Evaluation samples 0: no FA/RA at all (as --skip_eval); interval 0: only before and after.
            evaluation = EvaluationArguments(eval_samples_per_class=eval_samples) if eval_samples else False
            training = TrainingArguments(
                max_train_steps=steps, eval_every=eval_every if evaluation and eval_every else None
            )
        except USER_ERRORS as error:
            raise user_error(error) from error

        def work(on_step: Callable[[PhaseEvent], None]) -> ErasureResult:
            return erase_and_export(
                base_name,
                concept,
                output,
                replace=bool(replace),
                training=training,
                evaluate=evaluation,
                callbacks=(on_step,),
            )

        run = ErasureRun(work).start()
        started = time.monotonic()
        preparing = "Preparing: loading the model and data, measuring the original, computing the saliency mask…"
        progress(0, desc=preparing)  # Gradio's progress events, for API clients; the page shows its own bar
        yield progress_html(0, steps, preparing), None, "", gr.update(), gr.update()
        last_yield = 0.0
        for update in run.updates():
            if update is None:
                continue
            step, history = update
            done = step + 1 == steps
            text = f"Iteration {step + 1} / {steps} ({time.monotonic() - started:.0f} s)"
            if history:
                latest = history[-1]
                text += " · " + " · ".join(f"{k} {format_metric(latest[k])}" for k in CURVE_METRICS if k in latest)
            if done:
                text += ". Evaluating the erased model and exporting it…"
            progress((step + 1, steps), desc="Erasing", unit="iterations")
            if done or time.monotonic() - last_yield > 0.5:
                last_yield = time.monotonic()
                yield progress_html(step + 1, steps, text), curve_frame(history), gr.update(), gr.update(), gr.update()
        if run.error is not None or run.result is None:
            raise gr.Error(f"The erasure failed: {failure_text(run.error)}", print_exception=False)
        done_text = f"Done in {time.monotonic() - started:.0f} s: {output} is selected in the Compare tab."
        yield (
            progress_html(steps, steps, done_text),
            curve_frame(run.result.history),
            export_card(run.result.config, str(output)),
            gr.update(choices=self.erased_choices(), value=str(output)),
            gr.update(choices=self.original_choices([base_name]), value=base_name),
        )


# --- the page --------------------------------------------------------------------------------------------------------


def build_demo(
    original: str | None = None,
    erased: Sequence[str] = (),
    outputs_dirs: Sequence[str | Path] = (DEFAULT_OUTPUTS_DIR,),
    cache: PipelineCache | None = None,
) -> gr.Blocks:
    """The app: a Compare tab and an Erase tab. New erasures are written to ``outputs_dirs[0]``."""
    handlers = AppHandlers(cache or PipelineCache(), outputs_dirs, original=original, erased=erased)
    outputs_dirs = handlers.outputs_dirs
    state = handlers.initial_state()
    original_value = state["original"]

    with gr.Blocks(title="sfr-diffusion: before and after erasure", analytics_enabled=False) as demo:
        gr.Markdown(
            "# Before and after erasure\nThe original and the erased pipeline side by side: same inputs, same seed, "
            "same settings. Erase a class or concept in the **Erase** tab."
        )
        with gr.Tabs():
            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    original_box = gr.Dropdown(
                        handlers.original_choices([original_value]),
                        value=original_value,
                        label="Original pipeline",
                        info="A bundled model or a pipeline folder",
                        allow_custom_value=True,
                        scale=2,
                    )
                    erased_box = gr.Dropdown(
                        state["exports"],
                        value=state["erased"],
                        label="Erased pipeline",
                        info=f"Erased outputs in {', '.join(map(str, outputs_dirs))}, or a pipeline folder",
                        allow_custom_value=True,
                        scale=3,
                    )
                    refresh_button = gr.Button("Refresh", scale=0, min_width=100)
                with gr.Row(equal_height=True):
                    class_box = gr.Dropdown(
                        **{"choices": [ALL_CLASSES], "value": ALL_CLASSES, **state["class_settings"]},
                        label="Class",
                        allow_custom_value=True,
                    )
                    prompt_box = gr.Textbox(
                        **{"value": "", **state["prompt_settings"]},
                        label="Prompt",
                        placeholder="a handwritten digit three",
                    )
                    seed_box = gr.Number(0, precision=0, minimum=0, label="Seed")
                    steps_box = gr.Slider(1, 100, value=DEFAULT_INFERENCE_STEPS, step=1, label="Steps")
                    guidance_box = gr.Slider(0, 15, value=DEFAULT_GUIDANCE_SCALE, step=0.5, label="Guidance scale")
                compare_button = gr.Button("Compare", variant="primary", elem_id="compare-button")
                with gr.Row():
                    original_image = gr.Image(
                        label="Original", type="pil", format="png", interactive=False, elem_id="original-image"
                    )
                    erased_image = gr.Image(
                        label="Erased", type="pil", format="png", interactive=False, elem_id="erased-image"
                    )
                card_box = gr.Markdown(state["card"], elem_id="model-card")
            with gr.Tab("Erase", id="erase"):
                gr.Markdown(
                    "A short erasure with `sfr_diffusion.erase` (SFR-on at its defaults, in this process). FA/RA are "
                    "measured on digits-world models only; set evaluation samples to 0 to skip them."
                )
                with gr.Row():
                    base_box = gr.Dropdown(
                        handlers.original_choices([original_value]),
                        value=original_value,
                        label="Pipeline to erase from",
                        allow_custom_value=True,
                    )
                    concept_box = gr.Textbox("three", label="Class or concept to erase")
                    name_box = gr.Textbox(
                        "",
                        label="Export name",
                        placeholder="app-<model>-erase-<concept>",
                        info=f"A folder name in {outputs_dirs[0]}: {EXPORT_NAME_RULE}",
                    )
                    replace_box = gr.Checkbox(False, label=REPLACE_LABEL)
                with gr.Row():
                    iterations_box = gr.Slider(1, 200, value=30, step=1, label="Iterations")
                    eval_every_box = gr.Slider(0, 50, value=5, step=1, label="Evaluate every (iterations; 0: off)")
                    eval_samples_box = gr.Slider(0, 50, value=10, step=1, label="Evaluation samples per class")
                erase_button = gr.Button("Erase", variant="primary", elem_id="erase-button")
                progress_box = gr.HTML("", elem_id="erase-progress")
                curve_plot = gr.LinePlot(
                    None,
                    x="step",
                    y="value",
                    color="metric",
                    color_map=CURVE_METRICS,
                    y_lim=[0, 1.05],
                    title="FA (erased class) and RA (other classes) during erasure",
                    x_title="iteration",
                    y_title="",
                )
                result_box = gr.Markdown("", elem_id="erase-result")

        describe_inputs = [original_box, erased_box, class_box, prompt_box]
        describe_outputs = [card_box, class_box, prompt_box]
        hidden = {"api_visibility": "undocumented"}
        erased_box.input(handlers.pick_erased, [erased_box, original_box], original_box, **hidden)
        erased_box.change(handlers.describe, describe_inputs, describe_outputs, api_name="describe")
        original_box.change(handlers.describe, describe_inputs, describe_outputs, **hidden)
        refresh_button.click(
            handlers.refresh, [original_box, erased_box], [original_box, erased_box], api_name="refresh"
        )
        demo.load(handlers.refresh, [original_box, erased_box], [original_box, erased_box], **hidden)
        compare_button.click(
            handlers.compare,
            [original_box, erased_box, class_box, prompt_box, seed_box, steps_box, guidance_box],
            [original_image, erased_image, card_box],
            api_name="compare",
            concurrency_limit=1,  # sampling is CPU/GPU-bound: requests wait in the queue
        )
        erase_button.click(
            handlers.erase,
            [base_box, concept_box, iterations_box, eval_every_box, eval_samples_box, name_box, replace_box],
            [progress_box, curve_plot, result_box, erased_box, original_box],
            api_name="erase",
            show_progress="hidden",  # Gradio's overlay would hide the live curve: the page has its own bar
            concurrency_limit=1,
        )
    demo.queue(max_size=64)
    return demo


# --- the command line ------------------------------------------------------------------------------------------------


def auth_pair(text: str) -> tuple[str, str]:
    """``USER:PASSWORD`` as Gradio's ``launch(auth=...)`` takes it; the password may contain colons."""
    user, colon, password = text.partition(":")
    if not colon or not user.strip() or not password:
        # The value is not echoed: it is (meant to be) a password.
        raise argparse.ArgumentTypeError(
            f"expected USER:PASSWORD with a non-empty user and password (from --auth, else ${AUTH_ENV})"
        )
    return user.strip(), password


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable only from this machine: 127.x.x.x, ::1 or localhost."""
    host = (host or "").strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name or an empty string: it may be reachable from elsewhere
        return False


def warn_if_unprotected(host: str, share: bool, auth: tuple[str, str] | None) -> str | None:
    """Say loudly (log and stderr) when the page is reachable beyond this machine without a login; the message."""
    if auth is not None or (not share and is_loopback(host)):
        return None
    where = "through a public gradio.live link" if share else f"on {host}"
    message = (
        f"The page is served {where} without authentication: anyone who reaches it can run erasures and write to "
        f"disk. Pass --auth USER:PASSWORD (or set {AUTH_ENV})."
    )
    logger.warning(message)
    print(f"WARNING: {message}", file=sys.stderr)  # also when logging is not configured (main() from elsewhere)
    return message


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--original",
        default=None,
        help=f"Original pipeline: {', '.join(bundled_aliases())} or a folder (default: the erased export's base "
        f"model, else {DEFAULT_ORIGINAL}).",
    )
    parser.add_argument("--erased", nargs="+", default=[], help="Erased pipeline folders to offer first.")
    parser.add_argument(
        "--outputs_dir",
        action="append",
        default=[],
        help=f"Where to look for erased outputs besides ./{DEFAULT_OUTPUTS_DIR} (repeatable); the first one also "
        "receives the Erase tab's exports.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="Interface to bind (0.0.0.0: every interface).")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="Also open a public gradio.live link (off by default).")
    parser.add_argument(
        "--auth",
        type=auth_pair,
        default=os.environ.get(AUTH_ENV),  # argparse converts a string default with `type` too
        metavar="USER:PASSWORD",
        help=f"Require this login for the page and its API (default: ${AUTH_ENV}, if set). The environment variable "
        "keeps the password out of the process list. Without it, only serve on 127.0.0.1.",
    )
    args = parser.parse_args(argv)
    for path in filter(None, [args.original, *args.erased]):
        try:
            pipeline_folder(path)
        except USER_ERRORS as error:
            parser.error(str(error))
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Parse, build the page, serve it until interrupted."""
    args = parse_args(argv)
    warn_if_unprotected(args.host, args.share, args.auth)
    outputs_dirs = list(dict.fromkeys([*args.outputs_dir, DEFAULT_OUTPUTS_DIR]))
    demo = build_demo(original=args.original, erased=args.erased, outputs_dirs=outputs_dirs)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, auth=args.auth)


def cli(argv: Sequence[str] | None = None) -> int:
    """The ``sfr-app`` entry point (and ``python app.py``): logging to stderr, then :func:`main`."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own requests to itself
    main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
