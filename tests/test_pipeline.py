"""ClassConditionalDDPMPipeline: inference, class names, determinism and the save → from_pretrained round trip."""

import json

import numpy as np
import PIL.Image
import pytest
import torch

from sfr_diffusion import ClassConditionalDDPMPipeline

STEPS = 2


def generate(pipe, labels=(1, 3), seed=0, **kwargs):
    kwargs.setdefault("output_type", "pt")
    return pipe(list(labels), num_inference_steps=STEPS, generator=torch.manual_seed(seed), **kwargs).images


def test_output_types_have_the_documented_shapes(pipeline):
    pt = generate(pipeline, output_type="pt")
    np_images = generate(pipeline, output_type="np")
    pil = generate(pipeline, output_type="pil")

    assert isinstance(pt, torch.Tensor) and pt.shape == (2, 1, 8, 8)
    assert isinstance(np_images, np.ndarray) and np_images.shape == (2, 8, 8, 1)
    assert isinstance(pil, list) and len(pil) == 2
    assert all(isinstance(image, PIL.Image.Image) and image.size == (8, 8) for image in pil)
    assert 0.0 <= pt.min() and pt.max() <= 1.0
    np.testing.assert_array_equal(np_images, pt.permute(0, 2, 3, 1).numpy())


def test_return_dict_false_gives_a_tuple(pipeline):
    (images,) = pipeline(3, num_inference_steps=STEPS, output_type="pt", return_dict=False)

    assert images.shape == (1, 1, 8, 8)


def test_class_names_and_ids_are_interchangeable(pipeline):
    by_name = generate(pipeline, labels=("one", "three"))
    by_id = generate(pipeline, labels=(1, 3))
    by_digit_string = generate(pipeline, labels=("1", "3"))

    assert torch.equal(by_name, by_id)
    assert torch.equal(by_digit_string, by_id)
    assert pipeline.get_label_ids(["zero", 9, "three"]) == [0, 9, 3]
    assert pipeline.get_label_ids("seven") == [7]


@pytest.mark.parametrize(
    "label, message", [("eleven", "Unknown class 'eleven'"), (11, "out of range"), (-1, "out of range")]
)
def test_unknown_names_and_out_of_range_ids_are_rejected(pipeline, label, message):
    with pytest.raises(ValueError, match=message):
        pipeline([label], num_inference_steps=STEPS)


def test_the_null_class_samples_without_a_condition(pipeline):
    """10, the null class, is what classifier-free guidance steers from: asking for it samples unconditionally,
    as asking DiTPipeline for its null class does."""
    null = pipeline.null_class_id
    assert null == 10 and pipeline.get_label_ids([null, "three"]) == [10, 3]
    assert not torch.equal(generate(pipeline, labels=(null, null)), generate(pipeline, labels=(3, 3)))


def test_an_empty_list_of_classes_is_rejected(pipeline):
    with pytest.raises(ValueError, match="class"):
        pipeline([], num_inference_steps=STEPS)


def test_bad_output_type_and_step_count_are_rejected(pipeline):
    with pytest.raises(ValueError, match="output_type"):
        pipeline([1], num_inference_steps=STEPS, output_type="latent")
    with pytest.raises(ValueError, match="num_inference_steps"):
        pipeline([1], num_inference_steps=0)


def test_same_seed_gives_identical_images_and_another_seed_does_not(pipeline):
    first = generate(pipeline, seed=0)
    again = generate(pipeline, seed=0)
    other = generate(pipeline, seed=1)

    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_guidance_runs_and_changes_the_result(pipeline):
    plain = generate(pipeline, guidance_scale=1.0)
    guided = generate(pipeline, guidance_scale=3.0)

    assert guided.shape == plain.shape
    assert torch.isfinite(guided).all()
    assert not torch.equal(guided, plain)


def test_guidance_uses_the_null_class_as_the_unconditional_branch(pipeline):
    seen = []
    handle = pipeline.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["class_labels"].tolist()), with_kwargs=True
    )
    try:
        generate(pipeline, labels=(1, 3), guidance_scale=2.0)
    finally:
        handle.remove()

    assert seen == [[1, 3, 10, 10]] * STEPS


def test_save_and_reload_reproduce_images_and_labels(pipeline, tmp_path):
    expected = generate(pipeline, guidance_scale=2.0)

    pipeline.save_pretrained(tmp_path)
    reloaded = ClassConditionalDDPMPipeline.from_pretrained(tmp_path)
    reloaded.set_progress_bar_config(disable=True)

    assert torch.equal(generate(reloaded, guidance_scale=2.0), expected)
    assert reloaded.config.id2label == pipeline.config.id2label
    assert all(isinstance(key, int) for key in reloaded.config.id2label)
    assert reloaded.config.id2label[3] == "three"
    assert reloaded.get_label_ids("three") == [3]
    # JSON only has string keys; the pipeline normalises them back to ints on load.
    assert json.loads((tmp_path / "model_index.json").read_text())["id2label"]["3"] == "three"


def test_a_unet_without_class_embeddings_is_rejected(pipeline):
    from diffusers import UNet2DModel

    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(8, 8),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )

    with pytest.raises(ValueError, match="num_class_embeds"):
        ClassConditionalDDPMPipeline(unet=unet, scheduler=pipeline.scheduler)
