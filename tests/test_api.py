"""The public API: ``sfr_diffusion.erase()`` in a plain process, its data forms, its result, and the same weights as
the command line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import sfr_diffusion
from sfr_diffusion import DataArguments, EvaluationArguments, SFROnConfig, TrainingArguments, erase, load_pipeline
from sfr_diffusion.families import family_for
from sfr_diffusion.presets import learning_rate_for, preset_for
from sfr_diffusion.testing.layouts import (
    dit_pipeline,
    flux_pipeline,
    stable_diffusion_3_pipeline,
    stable_diffusion_pipeline,
    stable_diffusion_xl_pipeline,
)

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(max_train_steps=3, forget_batch_size=8, remain_batch_size=8)


@pytest.fixture
def ddpm():
    pipe = load_pipeline("digits-ddpm")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def unet_weights(folder: Path) -> dict:
    return load_file(next((folder / "unet").glob("*.safetensors")))


def test_the_package_exports_the_api():
    for name in (
        "erase",
        "load_pipeline",
        "TrainingArguments",
        "DataArguments",
        "EvaluationArguments",
        "SFROnConfig",
        "FTConfig",
        "GAConfig",
        "RLConfig",
        "SalUnConfig",
        "ESDConfig",
        "ErasureResult",
    ):
        assert hasattr(sfr_diffusion, name), name


def test_the_default_erasure_keeps_its_measured_fa_and_ra(ddpm, tmp_path):
    """The README's plain-process example: the default SFR-on run on the bundled DDPM ("three", 50 iterations, seed 0;
    remapped onto the kept class the original tells farthest from "three", six adversarial steps before each forget
    step, the remain step distilling the original) gives FA 0, RA 0.9978 (the base's) and FID 19.681 (base 19.936) at
    guidance 2, 50 samples per class, and the export holds what it reports."""
    result = erase(ddpm, "three")
    before, after = result.metrics["before"], result.metrics["after"]
    assert before["FA"] == 1.0 and after["FA"] == 0.0
    assert after["RA"] == pytest.approx(0.99778, abs=1e-4) and after["RA"] == before["RA"]
    assert after["FID"] == pytest.approx(19.681, abs=1e-2)
    assert result.steps == 50 and result.method == "sfr_on" and 0 < result.mask_statistics["density"] < 1
    folder = result.save_pretrained(tmp_path / "export")
    config = json.loads((folder / "unlearning_config.json").read_text())
    assert config["erased"] == {"concept": "three", "class_id": 3, "anchor_concept": "four"}
    assert config["training"]["learning_rate"] == 1e-3  # the DDPM family's default, recorded as used
    assert config["method_config"]["forget_loss"] == "remap" and config["family"] == "ddpm"  # the family's default
    assert config["method_config"]["adversarial_steps"] == 6  # the family's default too, recorded as used
    assert set(result.brief()) == {"erased", "method", "steps", "seconds", "before", "after"}
    brief = result.brief()["after"]  # rounded to 3 decimals; FID's third moves with the CPU's float kernels
    assert brief == {"FA": 0.0, "RA": 0.998, "FID": pytest.approx(19.681, abs=2e-3)}


@pytest.mark.parametrize(
    "model, rate", [("digits-ddpm", 1e-3), ("digits-dit", 5e-4), ("digits-sd", 3e-4), ("digits-sd3", 3e-4)]
)
def test_a_bundled_model_takes_the_learning_rate_measured_on_its_world(model, rate):
    pipeline = load_pipeline(model)
    assert learning_rate_for(family_for(pipeline), preset_for(pipeline)) == rate


@pytest.mark.parametrize(
    "build, rate",
    [
        (lambda: dit_pipeline("tiny", seed=0), 1e-4),
        (lambda: stable_diffusion_pipeline("tiny", seed=0), 1e-5),
        (lambda: stable_diffusion_xl_pipeline("tiny", seed=0), 1e-5),
        (lambda: stable_diffusion_3_pipeline("tiny", seed=0), 1e-5),
        (lambda: flux_pipeline("tiny", seed=0), 1e-5),
    ],
)
def test_any_other_checkpoint_takes_the_official_learning_rate_not_the_digits_one(build, rate):
    """The digits world's rates (3e-4 on a full SD UNet) would wreck a real model in a few steps."""
    pipeline = build()
    assert preset_for(pipeline) is None
    assert learning_rate_for(family_for(pipeline), None) == rate


def test_erase_and_the_command_line_give_bit_identical_weights(tmp_path):
    """Same seed and settings: the library in this process and `accelerate launch scripts/erase_concept.py` in another
    write the same denoiser, bit for bit."""
    options = ["--max_train_steps", "4", "--forget_batch_size", "16", "--remain_batch_size", "16", "--seed", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    launched = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--num_processes",
            "1",
            "--cpu",
            "-q",
            str(ROOT / "scripts" / "erase_concept.py"),
            *options,
            "--skip_eval",
            "--output_dir",
            str(tmp_path / "cli"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    pipe = load_pipeline("digits-ddpm")
    result = erase(
        pipe,
        "three",
        training=TrainingArguments(max_train_steps=4, forget_batch_size=16, remain_batch_size=16, seed=3),
        evaluate=False,
    )
    library = result.save_pretrained(tmp_path / "api")
    cli_weights, api_weights = unet_weights(tmp_path / "cli"), unet_weights(library)
    assert cli_weights.keys() == api_weights.keys()
    assert all(torch.equal(cli_weights[k], api_weights[k]) for k in cli_weights)
    original = unet_weights(Path(sfr_diffusion.presets.resolve_model("digits-ddpm")))
    assert any(not torch.equal(original[k], api_weights[k]) for k in original)  # it did train


def test_data_as_a_dataset_or_a_pair_of_sets_matches_the_preset(ddpm, digits_train):
    """A `datasets` split with a label column, or (forget, remain) sets, erase exactly as the preset's data does."""
    training = TrainingArguments(**SMALL)

    def erased(data):
        pipe = load_pipeline("digits-ddpm")
        erase(pipe, "three", data=data, training=training, evaluate=False)
        return {k: v.clone() for k, v in pipe.unet.state_dict().items()}

    preset = erased(None)
    as_split = erased(digits_train)
    assert all(torch.equal(preset[k], as_split[k]) for k in preset)
    labels = digits_train["label"]
    forget = digits_train.select([i for i, y in enumerate(labels) if y == 3]).remove_columns("label")
    remain = digits_train.select([i for i, y in enumerate(labels) if y != 3])
    as_pair = erased((forget, remain))  # the same rows in the same order: the same batches
    assert all(torch.equal(preset[k], as_pair[k]) for k in preset)


def test_a_method_by_config_and_an_evaluate_callable(ddpm):
    seen = []

    def evaluate(pipeline):
        seen.append(pipeline is ddpm)
        return {"FA": 0.5, "RA": 0.5}

    result = erase(
        ddpm,
        3,
        method=SFROnConfig(forget_loss="remap", remap_target="seven", use_mask=False),
        training=TrainingArguments(**SMALL, eval_every=1),
        evaluate=evaluate,
    )
    assert seen == [True] * 5  # before, every iteration (3), after
    assert [record["step"] for record in result.history] == [0, 1, 2, 3]
    assert result.mask_statistics is None and result.config["method_config"]["remap_target"] == "seven"


def test_unknown_method_and_wrong_types_fail_before_any_work(ddpm):
    with pytest.raises(ValueError, match="Unknown method 'sfr'"):
        erase(ddpm, "three", method="sfr")
    with pytest.raises(TypeError, match="data must be"):
        erase(ddpm, "three", data=["not", "data"], training=TrainingArguments(**SMALL))
    with pytest.raises(ValueError, match="Unknown class 'eleven'"):
        erase(ddpm, "eleven", training=TrainingArguments(**SMALL), evaluate=False)


def test_text_to_image_prompts_as_lists(tmp_path, monkeypatch):
    """Prompt lists in DataArguments; the remap goes to the preset's anchor unless the method names one."""
    pipe = load_pipeline("digits-sd")
    pipe.set_progress_bar_config(disable=True)
    data = DataArguments(
        forget_prompts=["the digit three"], remain_prompts=["the digit seven", "a blank image"], images_per_prompt=2
    )
    result = erase(pipe, "three", data=data, training=TrainingArguments(**SMALL), evaluate=False)
    erased = result.config["erased"]
    assert erased["forget_prompts"] == ["the digit three"]
    assert erased["remain_prompts"] == ["a blank image", "the digit seven"]
    assert erased["anchor_concept"] == "a blank image"
    anchored = erase(
        pipe,
        "three",
        data=data,
        method=SFROnConfig(remap_target="nothing at all"),
        training=TrainingArguments(**SMALL),
        evaluate=False,
    )
    assert anchored.config["erased"]["anchor_concept"] == "nothing at all"


def test_evaluation_arguments_reach_the_judge(ddpm):
    result = erase(
        ddpm,
        "three",
        training=TrainingArguments(max_train_steps=1, forget_batch_size=4, remain_batch_size=4),
        evaluate=EvaluationArguments(eval_samples_per_class=6, guidance_scale=1.5),
    )
    assert result.metrics["after"]["samples_per_class"] == 6 and result.metrics["after"]["guidance_scale"] == 1.5


def test_push_to_hub_uploads_the_export_folder(ddpm, tmp_path, monkeypatch):
    """The upload at the huggingface_hub boundary: a repository is created and the whole export folder sent."""
    import huggingface_hub

    calls = {}

    class Repo(str):
        repo_id = "me/digits-no-three"

    monkeypatch.setattr(
        huggingface_hub,
        "create_repo",
        lambda repo_id, **kw: calls.setdefault("create", repo_id) and Repo("https://hub/me/digits-no-three"),
    )
    monkeypatch.setattr(huggingface_hub, "upload_folder", lambda **kw: calls.setdefault("upload", kw))
    result = erase(ddpm, "three", training=TrainingArguments(**SMALL), evaluate=False)
    folder = result.save_pretrained(tmp_path / "export", push_to_hub=True, hub_model_id="me/digits-no-three")
    assert calls["create"] == "me/digits-no-three"
    assert calls["upload"]["repo_id"] == "me/digits-no-three"
    assert Path(calls["upload"]["folder_path"]) == folder and (folder / "unlearning_config.json").is_file()


def test_tracked_runs_export_an_fa_ra_curve(ddpm, tmp_path):
    from PIL import Image

    result = erase(
        ddpm,
        "three",
        training=TrainingArguments(**SMALL, eval_every=1),
        evaluate=EvaluationArguments(eval_samples_per_class=4),
    )
    folder = result.save_pretrained(tmp_path / "export")
    with Image.open(folder / "erasure_curve.png") as curve:
        assert curve.size == (480, 300)
        colours = {colour for _, colour in curve.convert("RGB").getcolors(1 << 20)}
    assert (214, 39, 40) in colours and (31, 119, 180) in colours  # the FA and RA lines were drawn
    untracked = erase(load_pipeline("digits-ddpm"), "three", training=TrainingArguments(**SMALL), evaluate=False)
    assert not (untracked.save_pretrained(tmp_path / "plain") / "erasure_curve.png").exists()


def test_the_console_commands_are_installed_with_the_package():
    """The wheel holds neither scripts/ nor app.py: sfr-erase, sfr-evaluate, sfr-attack and sfr-app are its entry
    points."""
    from importlib.metadata import entry_points

    commands = {ep.name: ep.value for ep in entry_points(group="console_scripts") if ep.name.startswith("sfr-")}
    assert commands == {
        "sfr-erase": "sfr_diffusion.commands.erase:cli",
        "sfr-evaluate": "sfr_diffusion.commands.evaluate:cli",
        "sfr-attack": "sfr_diffusion.commands.attack:cli",
        "sfr-app": "sfr_diffusion.app:cli",
    }
    for value in commands.values():
        module, name = value.split(":")
        assert callable(getattr(__import__(module, fromlist=[name]), name))


def test_the_readme_python_example_runs_as_written(tmp_path):
    """The README's first Python block, in a plain process (no accelerate launch), from an empty folder."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## From Python") :]
    code = section[
        section.index("```python\n") + len("```python\n") : section.index("```\n", section.index("```python"))
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "'FA': 0.0" in done.stdout  # the metrics it prints
    assert (tmp_path / "outputs" / "digits-ddpm-erase-three" / "unlearning_config.json").is_file()
