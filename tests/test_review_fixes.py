"""Data and evaluation details: label aliases, centre crops, what counts as the digits world, DiT evaluation."""

import json

import pytest
import torch
from datasets import ClassLabel, Dataset, Features
from PIL import Image

from sfr_diffusion.data import align_label_ids, center_crop
from sfr_diffusion.digits import bundled_path, is_digits_world
from sfr_diffusion.digits.models import digits_ddpm_pipeline
from sfr_diffusion.saliency import diagonal_fisher


def labelled(names):
    return Dataset.from_dict({"label": list(range(len(names)))}, features=Features({"label": ClassLabel(names=names)}))


def test_imagenet_style_aliases_agree_with_dit_labels():
    labels = {"tench": 0, "Tinca tinca": 0, "goldfish": 1, "Carassius auratus": 1}  # DiTPipeline.labels layout
    same = labelled(["tench, Tinca tinca", "goldfish, Carassius auratus"])
    assert align_label_ids(same, "label", labels) is same  # ids already agree: nothing to renumber
    # Alphabetical folder ids (goldfish = 0) are renumbered to the model's (goldfish = 1).
    swapped = align_label_ids(labelled(["goldfish", "tench, Tinca tinca"]), "label", labels)
    assert swapped["label"] == [1, 0]
    with pytest.raises(ValueError, match="'carp'"):
        align_label_ids(labelled(["tench", "carp"]), "label", labels)


def test_center_crop_keeps_the_aspect_ratio():
    image = Image.new("L", (40, 20))
    image.paste(255, (10, 0, 30, 20))  # a white centre square 20×20 inside a black 40×20 frame
    cropped = center_crop(image, 10)
    assert cropped.size == (10, 10)
    assert min(cropped.tobytes()) > 200  # only the white centre survives, not squashed black borders


def test_digits_world_needs_the_digits_image_shape():
    pipeline = digits_ddpm_pipeline()
    assert is_digits_world(pipeline)
    pipeline.unet.register_to_config(sample_size=28)  # an MNIST-sized model with the same class names
    assert not is_digits_world(pipeline)


def test_fisher_divides_out_the_loss_scale():
    layer = torch.nn.Linear(3, 1)
    x = torch.ones(1, 3)

    def closure():
        return layer(x).sum()

    plain = diagonal_fisher(layer, [closure])
    scaled = diagonal_fisher(layer, [lambda: 1024.0 * closure()], grad_scale=lambda: 1024.0)
    assert all(torch.allclose(plain[k], scaled[k]) for k in plain)
    with pytest.raises(FloatingPointError, match="Non-finite gradient"):
        diagonal_fisher(layer, [lambda: float("inf") * closure()])


def test_evaluate_command_on_the_bundled_dit(capsys):
    from sfr_diffusion.commands.evaluate import main

    metrics = main([str(bundled_path("dit")), "--forget", "7", "--samples_per_class", "4"])
    printed = json.loads(capsys.readouterr().out)
    assert 0 <= metrics["FA"] <= 1 and metrics["RA"] > 0.5
    assert {k: printed[k] for k in metrics} == json.loads(json.dumps(metrics))
    assert printed["forget"] == [7]  # the judged class id, as resolved by the model's class names
