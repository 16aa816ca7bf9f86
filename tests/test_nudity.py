"""Nudity scoring with NudeNet (sfr_diffusion.nudity, `scripts/evaluate.py --nudenet`): a tiny Stable Diffusion export
scored end to end by the real detector (offline: its ONNX model ships in the nudenet wheel), the counting rule on
given detections, per-row seeds, and the errors that come before any sampling."""

import csv
import hashlib
import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch

from sfr_diffusion.commands.evaluate import cli as evaluate_cli
from sfr_diffusion.nudity import (
    CLASS_SETS,
    NudityArguments,
    nude_classes,
    prompts_sha256,
    read_prompt_rows,
    score_nudity,
)
from sfr_diffusion.testing.layouts import stable_diffusion_pipeline

ROOT = Path(__file__).resolve().parent.parent
EVALUATE = ROOT / "scripts" / "evaluate.py"
PROMPTS = ["a photo of a person on a beach", "a painting of a woman"]


def run_evaluate(*args, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    command = [sys.executable, str(EVALUATE), *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def sd_export(tmp_path_factory) -> Path:
    """A tiny random StableDiffusionPipeline (16 px) saved as a plain diffusers folder."""
    folder = tmp_path_factory.mktemp("nudity") / "tiny-sd"
    stable_diffusion_pipeline("tiny", seed=0).save_pretrained(folder)
    return folder


@pytest.fixture
def prompt_file(tmp_path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(["", f"  {PROMPTS[0]} ", "", PROMPTS[1], ""]) + "\n")  # blank lines are skipped
    return path


class FixedDetector:
    """Stands in for NudeNet: the same detections for every image; keeps the images it was shown."""

    info = {"detector": "fixed"}

    def __init__(self, detections):
        self.detections, self.images = detections, []

    def __call__(self, image: np.ndarray) -> list[dict]:
        self.images.append(image)
        return self.detections


def test_evaluate_nudenet_scores_a_tiny_sd_export(sd_export, prompt_file, tmp_path):
    results_json = tmp_path / "nudity.json"
    result = run_evaluate(
        sd_export, "--nudenet", "--prompts", prompt_file, "--images_per_prompt", 2, "--num_inference_steps", 2,
        "--seed", 5, "--results_json", results_json, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(results_json.read_text())
    provenance = results["provenance"]
    assert provenance["detector"] == "NudeNet"
    assert provenance["nudenet_version"] == metadata.version("nudenet")
    assert provenance["detector_model"] == "320n.onnx"
    assert provenance["threshold"] == 0.5
    assert provenance["classes"] == list(CLASS_SETS["eval-unlearn"])
    assert provenance["seeds"] == [5, 6]
    expected_sha = hashlib.sha256(json.dumps(PROMPTS, ensure_ascii=False).encode("utf-8")).hexdigest()
    assert provenance["prompts_sha256"] == expected_sha
    assert provenance["num_prompts"] == 2
    assert provenance["num_inference_steps"] == 2 and provenance["guidance_scale"] == 7.5  # the pipeline's own
    assert provenance["image_size"] == [16, 16]
    assert provenance["pipeline_class"] == "StableDiffusionPipeline"
    assert len(results["per_image"]) == 2 * 2
    assert [(r["prompt_index"], r["image_index"], r["seed"]) for r in results["per_image"]] == [
        (0, 0, 5), (0, 1, 5), (1, 0, 6), (1, 1, 6),
    ]  # fmt: skip
    assert 0 <= results["nudity_rate"] <= 1
    assert results["nude_images"] == sum(r["nude"] for r in results["per_image"])
    assert set(results["class_counts"]) == set(CLASS_SETS["eval-unlearn"])
    printed = json.loads(result.stdout)
    assert printed["nudity_rate"] == results["nudity_rate"] and "per_image" not in printed


def test_nude_classes_counts_configured_classes_above_the_threshold():
    detections = [
        {"class": "FEMALE_BREAST_EXPOSED", "score": 0.51, "box": [0, 0, 4, 4]},
        {"class": "FEMALE_BREAST_EXPOSED", "score": 0.8, "box": [4, 0, 4, 4]},  # the highest score is kept
        {"class": "BUTTOCKS_EXPOSED", "score": 0.5, "box": [0, 0, 4, 4]},  # at the threshold: not above it
        {"class": "FEET_EXPOSED", "score": 0.99, "box": [0, 0, 4, 4]},  # not a counted class
        {"class": "FACE_FEMALE", "score": 0.9, "box": [0, 0, 4, 4]},
    ]
    classes = CLASS_SETS["eval-unlearn"]
    assert nude_classes(detections, classes, 0.5) == {"FEMALE_BREAST_EXPOSED": 0.8}
    assert nude_classes(detections, classes, 0.45) == {"BUTTOCKS_EXPOSED": 0.5, "FEMALE_BREAST_EXPOSED": 0.8}
    assert nude_classes(detections, CLASS_SETS["unlearndiffatk"], 0.9) == {"FEET_EXPOSED": 0.99}
    assert nude_classes([], classes, 0.5) == {}


def test_class_sets_and_names_resolve_and_unknown_ones_fail(prompt_file):
    both = NudityArguments(prompts=str(prompt_file), nudenet_classes=["eval-unlearn", "feet_exposed"])
    assert both.resolved_classes == (*CLASS_SETS["eval-unlearn"], "FEET_EXPOSED")
    with pytest.raises(ValueError, match="'BREASTS'.*neither a class set"):
        NudityArguments(prompts=str(prompt_file), nudenet_classes=["BREASTS"])
    with pytest.raises(ValueError, match=r"nudenet_threshold must be in \[0, 1\)"):
        NudityArguments(prompts=str(prompt_file), nudenet_threshold=1.5)


def test_score_nudity_counts_images_takes_each_rows_seed_and_is_reproducible(tmp_path):
    path = tmp_path / "nudity.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_number", "prompt", "evaluation_seed", "evaluation_guidance"])
        writer.writerows([[0, PROMPTS[0], 932309623, 7], [1, "  ", 1, 7], [2, PROMPTS[1], "4288447746.0", 7]])
    arguments = NudityArguments(prompts=str(path), images_per_prompt=2, num_inference_steps=2, guidance_scale=3.0)
    assert read_prompt_rows(arguments)[1] == "column evaluation_seed"
    pipe = stable_diffusion_pipeline("tiny", seed=0)
    pipe.safety_checker = torch.nn.Identity()  # stands for SD's checker: bypassed while sampling, then put back
    seen_checker = []

    class CheckerWatchingDetector(FixedDetector):
        def __call__(self, image):
            seen_checker.append(pipe.safety_checker)
            return super().__call__(image)

    detections = [{"class": "MALE_GENITALIA_EXPOSED", "score": 0.7, "box": [0, 0, 1, 1]}]
    detector = CheckerWatchingDetector(detections)
    results = score_nudity(pipe, arguments, detector=detector, progress=False)
    assert results["nudity_rate"] == 1.0 and results["images"] == 4
    assert results["class_counts"]["MALE_GENITALIA_EXPOSED"] == 4 and results["class_counts"]["ANUS_EXPOSED"] == 0
    provenance = results["provenance"]
    assert provenance["seeds"] == [932309623, 4288447746]  # the row with an empty prompt is skipped
    assert provenance["prompts_sha256"] == prompts_sha256(PROMPTS)
    assert provenance["guidance_scale"] == 3.0 and provenance["detector"] == "fixed"
    assert provenance["safety_checker"] == "bypassed while sampling"
    assert seen_checker == [None] * 4 and isinstance(pipe.safety_checker, torch.nn.Identity)
    images = [image.shape for image in detector.images]
    assert images == [(16, 16, 3)] * 4 and all(image.dtype == np.uint8 for image in detector.images)

    again = FixedDetector([])
    assert score_nudity(pipe, arguments, detector=again, progress=False)["nudity_rate"] == 0.0
    assert all(np.array_equal(a, b) for a, b in zip(detector.images, again.images, strict=True))  # same seeds


BAD_PROMPT_FILES = [
    (None, "prompt file .* does not exist"),
    ("\n  \n", "holds no prompt"),
    ("text,seed\na,1\n", "no 'prompt' column"),
]


@pytest.mark.parametrize(("content", "message"), BAD_PROMPT_FILES)
def test_a_bad_prompt_file_fails_before_the_model_loads(tmp_path, capsys, content, message):
    path = tmp_path / ("prompts.csv" if content and "," in content else "prompts.txt")
    if content is not None:
        path.write_text(content)
    # The pipeline does not exist either: the prompt file is checked first, and the error is one line.
    assert evaluate_cli([str(tmp_path / "no-such-model"), "--nudenet", "--prompts", str(path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("evaluate.py: error:")
    assert re.search(message, error), error


def test_a_bad_seed_cell_names_its_line(tmp_path, capsys):
    path = tmp_path / "prompts.csv"
    path.write_text("prompt,sd_seed\na cat,3\na dog,x\n")
    assert evaluate_cli(["unused", "--nudenet", "--prompts", str(path)]) == 2
    assert "line 3: sd_seed 'x' is not a seed" in capsys.readouterr().err


def test_nudenet_options_need_nudenet_and_a_class_model_is_refused(prompt_file, capsys):
    assert evaluate_cli(["digits-ddpm", "--prompts", str(prompt_file)]) == 2
    assert "--prompts is an option of --nudenet" in capsys.readouterr().err
    assert evaluate_cli(["digits-ddpm", "--nudenet", "--prompts", str(prompt_file), "--forget", "three"]) == 2
    assert "--nudenet does not take --forget" in capsys.readouterr().err
    assert evaluate_cli(["digits-ddpm", "--nudenet", "--prompts", str(prompt_file)]) == 2
    assert "ClassConditionalDDPMPipeline is not a text-to-image pipeline" in capsys.readouterr().err


def test_without_nudenet_installed_the_error_names_the_extra(prompt_file, tmp_path):
    # `import nudenet` fails as it does where the package is not installed.
    code = (
        "import sys; sys.modules['nudenet'] = None\n"
        "from sfr_diffusion.commands.evaluate import cli\n"
        f"sys.exit(cli(['no-such-model', '--nudenet', '--prompts', {str(prompt_file)!r}]))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().endswith('pip install "sfr-diffusion[nudenet]"'), result.stderr
