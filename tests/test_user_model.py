"""The erase command on a user's own class-conditional model: RGB, other sizes, imagefolder or `datasets` data."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, UNet2DModel
from PIL import Image
from safetensors.torch import load_file

from sfr_diffusion import ClassConditionalDDPMPipeline
from sfr_diffusion.commands.erase import cli, main
from sfr_diffusion.families import family_for
from sfr_diffusion.methods import SFROn, SFROnConfig

CLASSES = ("cat", "dog", "frog")
SHORT = ["--max_train_steps", "2", "--forget_batch_size", "4", "--remain_batch_size", "4"]


@pytest.fixture
def fresh_accelerate():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


@pytest.fixture
def user_pipeline(tmp_path):
    """A tiny random-weight RGB 16×16 class-conditional DDPM with three classes (+ null), saved like a user's."""
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        num_class_embeds=len(CLASSES) + 1,
    )
    scheduler = DDIMScheduler(num_train_timesteps=50, prediction_type="epsilon")
    pipe = ClassConditionalDDPMPipeline(unet=unet, scheduler=scheduler, id2label=dict(enumerate(CLASSES)))
    path = tmp_path / "user-ddpm"
    pipe.save_pretrained(path)
    return path


def write_imagefolder(root: Path, per_class: int = 6, size: int = 20) -> Path:
    """One sub-folder per class of random RGB PNGs at a size other than the model's (the loader resizes)."""
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def run(argv) -> dict:
    """The command's `main` on a short run; returns what the export's unlearning_config.json records."""
    return main([*argv, *SHORT]).config


def test_erases_a_class_of_a_user_model_from_an_imagefolder(tmp_path, user_pipeline, fresh_accelerate):
    data = write_imagefolder(tmp_path / "images")
    out = tmp_path / "no-dog"
    summary = run(
        ["--pretrained_model_name_or_path", str(user_pipeline), "--train_data_dir", str(data), "--concept", "dog",
         "--output_dir", str(out)],
    )  # fmt: skip
    assert summary["erased"] == {"concept": "dog", "class_id": 1, "anchor_concept": "cat"}
    assert summary["metrics"] == {"before": None, "after": None}  # no judge for this model's classes
    config = json.loads((out / "unlearning_config.json").read_text())
    assert config["base_model"] == str(user_pipeline)
    reloaded = ClassConditionalDDPMPipeline.from_pretrained(out)
    assert reloaded.unet.config.in_channels == 3 and reloaded.config.id2label == dict(enumerate(CLASSES))
    before, after = (
        load_file(user_pipeline / "unet" / "diffusion_pytorch_model.safetensors"),
        load_file(out / "unet" / "diffusion_pytorch_model.safetensors"),
    )
    assert any(not torch.equal(before[k], after[k]) for k in before), "erasure changed no weight"


def test_reads_a_datasets_folder_with_custom_columns(tmp_path, user_pipeline, fresh_accelerate):
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(12)]
    features = Features({"img": ImageFeature(), "fine_label": ClassLabel(names=list(CLASSES))})
    dataset = Dataset.from_dict({"img": images, "fine_label": [i % 3 for i in range(12)]}, features=features)
    dataset_dir = tmp_path / "my-dataset"
    dataset_dir.mkdir()
    dataset.to_parquet(str(dataset_dir / "train.parquet"))

    summary = run(
        ["--pretrained_model_name_or_path", str(user_pipeline), "--dataset_name", str(dataset_dir),
         "--image_column", "img", "--label_column", "fine_label", "--concept", "2", "--output_dir",
         str(tmp_path / "out")],
    )  # fmt: skip
    assert summary["erased"] == {"concept": "frog", "class_id": 2, "anchor_concept": "cat"}


def test_missing_data_for_a_user_model_is_a_clear_error(tmp_path, user_pipeline, fresh_accelerate):
    with pytest.raises(ValueError, match="--dataset_name or --train_data_dir"):
        run(["--pretrained_model_name_or_path", str(user_pipeline), "--concept", "cat",
             "--output_dir", str(tmp_path / "o")])  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_wrong_column_is_a_clear_error(tmp_path, user_pipeline, fresh_accelerate):
    data = write_imagefolder(tmp_path / "images", per_class=2)
    with pytest.raises(ValueError, match="Column 'picture' not in the data set"):
        run(
            ["--pretrained_model_name_or_path", str(user_pipeline), "--train_data_dir", str(data),
             "--image_column", "picture", "--concept", "cat", "--output_dir", str(tmp_path / "o")],
        )  # fmt: skip


def test_class_names_that_disagree_with_the_model_are_refused(tmp_path, user_pipeline, fresh_accelerate):
    data = tmp_path / "images"
    for name in ("ant", "bee", "cow"):  # imagefolder labels: ant=0, bee=1, cow=2 — not the model's cat/dog/frog
        (data / name).mkdir(parents=True)
        Image.new("RGB", (16, 16)).save(data / name / "0.png")
    with pytest.raises(ValueError, match="are not among the model's class names"):
        run(
            ["--pretrained_model_name_or_path", str(user_pipeline), "--train_data_dir", str(data),
             "--concept", "cat", "--output_dir", str(tmp_path / "o")],
        )  # fmt: skip


def test_rerun_into_a_folder_with_checkpoints_asks_to_resume(tmp_path, user_pipeline, fresh_accelerate):
    data = write_imagefolder(tmp_path / "images", per_class=2)
    argv = ["--pretrained_model_name_or_path", str(user_pipeline), "--train_data_dir", str(data), "--concept", "cat",
            "--output_dir", str(tmp_path / "o"), "--checkpointing_steps", "1"]  # fmt: skip
    run(argv)
    assert (tmp_path / "o-checkpoints" / "checkpoint-2").is_dir()  # beside the export, never inside it
    with pytest.raises(FileExistsError, match="--overwrite_output_dir"):
        run(argv)
    argv.append("--overwrite_output_dir")
    with pytest.raises(FileExistsError, match="--resume_from_checkpoint latest"):
        run(argv)
    summary = run([*argv, "--resume_from_checkpoint", "latest"])  # nothing left to do: exports again
    assert summary["steps"] == 2


@pytest.mark.parametrize(
    "options",
    [["--mixed_precision", "bf16"], ["--gradient_checkpointing"], ["--forget_loss", "remap", "--remap_class", "frog"]],
    ids=["bf16", "gradient-checkpointing", "remap"],
)
def test_training_options_run_and_export_fp32_weights(tmp_path, user_pipeline, fresh_accelerate, options):
    data = write_imagefolder(tmp_path / "images", per_class=3)
    out = tmp_path / "o"
    summary = run(
        ["--pretrained_model_name_or_path", str(user_pipeline), "--train_data_dir", str(data), "--concept", "cat",
         "--output_dir", str(out), *options],
    )  # fmt: skip
    weights = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(w.dtype == torch.float32 for w in weights.values())
    assert all(torch.isfinite(w).all() for w in weights.values())
    if "remap" in options:  # --remap_class is an alias of --remap_target: a class name, resolved by the family
        assert summary["method_config"]["forget_loss"] == "remap"
        assert summary["method_config"]["remap_target"] == "frog"
        family = family_for(ClassConditionalDDPMPipeline.from_pretrained(user_pipeline))
        method = SFROn(SFROnConfig(**summary["method_config"]), family)
        assert method.remap_condition == 2  # frog's id in the model's id2label


def test_fine_tuning_baseline_runs_through_the_same_command(tmp_path, user_pipeline, fresh_accelerate):
    data = write_imagefolder(tmp_path / "images", per_class=3)
    summary = run(
        ["--pretrained_model_name_or_path", str(user_pipeline), "--train_data_dir", str(data), "--concept", "cat",
         "--output_dir", str(tmp_path / "ft"), "--method", "ft"],
    )  # fmt: skip
    assert summary["method"] == "ft" and summary["mask_statistics"] is None
    assert summary["method_config"] == {"label_dropout": 0.1, "max_grad_norm": 1.0}
    assert not (tmp_path / "ft" / "saliency_mask.safetensors").exists()


def test_options_a_method_does_not_take_are_refused(tmp_path, user_pipeline, fresh_accelerate, capsys):
    """An option of another method is a one-line error naming it and the chosen method's options, before any work."""
    data = write_imagefolder(tmp_path / "images", per_class=2)
    base = ["--pretrained_model_name_or_path", str(user_pipeline), "--train_data_dir", str(data), "--concept", "cat"]
    capsys.readouterr()
    code = cli([*base, "--output_dir", str(tmp_path / "a"), "--method", "ft", "--gamma", "3", "--no_mask", *SHORT])
    assert code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("erase_concept.py: error: --method ft does not take "), lines
    assert "--gamma" in lines[0] and "--no_mask" in lines[0], lines[0]  # both of SFR-on's options are named
    assert "its options are --label_dropout, --max_grad_norm" in lines[0]
    assert not (tmp_path / "a").exists()
    # The same options are SFR-on's own: they run.
    summary = run([*base, "--output_dir", str(tmp_path / "b"), "--no_mask", "--gamma", "3"])
    assert summary["method_config"]["use_mask"] is False and summary["method_config"]["gamma"] == 3.0
