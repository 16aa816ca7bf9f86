"""Retrain, the gold standard: the bundled recipe on data that provably never shows the forgotten digit."""

import pytest
import torch

from sfr_diffusion import load_pipeline
from sfr_diffusion.digits import models
from sfr_diffusion.digits import retrain as retrain_module
from sfr_diffusion.digits.data import digits_tensor
from sfr_diffusion.digits.prompts import digit_prompts


def test_training_set_without_a_digit():
    images, labels = digits_tensor("train")
    kept_images, kept_labels = models.digits_training_set(exclude_digit=3)
    assert 3 not in kept_labels.tolist()
    assert len(kept_labels) == len(labels) - int((labels == 3).sum())
    assert torch.equal(kept_images, images[labels != 3])
    with pytest.raises(ValueError, match="0..9"):
        models.digits_training_set(exclude_digit=10)


@pytest.fixture
def recorded_training(monkeypatch):
    """Replace the training loop by a recorder, so the test sees exactly what the recipe would train on."""
    calls = []

    def record(family, images, labels, **kwargs):
        calls.append((family, images, labels, kwargs))
        return family.pipeline

    monkeypatch.setattr(models, "train_denoiser", record)
    return calls


def test_class_models_retrain_without_the_digit(recorded_training):
    models.pretrain_digits_model("ddpm", exclude_digit=7, steps=5)
    _, images, labels, kwargs = recorded_training[0]
    assert 7 not in labels.tolist() and len(images) == len(labels) and kwargs["steps"] == 5
    models.pretrain_digits_model("ddpm", steps=5)
    assert 7 in recorded_training[1][2].tolist()  # the base recipe sees it


def test_text_model_retrain_never_sees_the_digits_captions(recorded_training):
    vae = models.digits_vae()
    models.pretrain_digits_model("sd", vae=vae, exclude_digit=3, steps=5)
    family, images, captions, _ = recorded_training[0]
    forbidden = {family.prompt_id(p) for kind in ("train", "held_out") for p in digit_prompts(3, kind)}
    seen = set(captions.flatten().tolist())
    assert not forbidden & seen
    assert {family.prompt_id(p) for p in digit_prompts(4)} <= seen
    # The blank images under the neutral captions are as many as in the base recipe.
    blanks = (images == -1).flatten(1).all(1).sum()
    assert blanks == len(models.digits_training_set()[0]) // 10


def test_retrain_is_cached_and_loads(monkeypatch, tmp_path):
    monkeypatch.setenv("SFR_DIFFUSION_CACHE", str(tmp_path))
    trained = []
    real = retrain_module.pretrain_digits_model

    def counting(*args, **kwargs):
        trained.append(kwargs["exclude_digit"])
        return real(*args, **kwargs)

    monkeypatch.setattr(retrain_module, "pretrain_digits_model", counting)
    path = retrain_module.retrain("ddpm", 5, steps=2)
    assert retrain_module.retrain("ddpm", 5, steps=2) == path and trained == [5]  # the second call trains nothing
    assert path.parent == tmp_path / "retrain" and "without-5" in path.name
    assert not list(path.parent.glob("*.partial-*"))
    assert load_pipeline(path).unet.config.num_class_embeds == 11
    with pytest.raises(ValueError, match="ddpm"):
        retrain_module.retrain("vae", 5)
