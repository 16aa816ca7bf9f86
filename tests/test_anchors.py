"""The kept class a class-conditional remap goes to when none is named (sfr_diffusion.anchors)."""

import pytest
import torch

from sfr_diffusion import SFROnConfig, TrainingArguments, erase, load_pipeline
from sfr_diffusion.anchors import farthest_kept_class, prediction_distances
from sfr_diffusion.families import family_for
from sfr_diffusion.presets import preset_for
from sfr_diffusion.sources import resolve_data

SHORT = TrainingArguments(max_train_steps=2, forget_batch_size=8, remain_batch_size=8)


def test_a_class_is_at_distance_zero_from_itself_and_the_distances_are_reproducible(pipeline, forget_remain):
    family = family_for(pipeline)
    distances = prediction_distances(family, forget_remain[0], [3, 0, 5, 9])
    assert distances[0] == 0  # the forget images are all "three": the same prediction under their own class
    assert (distances[1:] > 0).all()
    assert torch.equal(distances, prediction_distances(family, forget_remain[0], [3, 0, 5, 9]))
    assert not torch.equal(distances, prediction_distances(family, forget_remain[0], [3, 0, 5, 9], seed=1))


def test_the_anchor_is_the_farthest_kept_class_and_never_an_erased_or_the_null_one(forget_remain):
    family = family_for(load_pipeline("digits-ddpm"))
    forget = forget_remain[0]
    kept = [c for c in range(family.num_classes()) if c != 3]
    order = prediction_distances(family, forget, kept).argsort(descending=True).tolist()
    farthest, runner_up = kept[order[0]], kept[order[1]]
    assert farthest_kept_class(family, forget, [3]) == farthest
    # Erasing the farthest class as well moves the anchor to the next one: an erased class is never a target.
    assert farthest_kept_class(family, forget, [3, farthest]) == runner_up
    assert family.null_class_id not in kept


def test_every_class_erased_leaves_no_anchor(pipeline, forget_remain):
    family = family_for(pipeline)
    with pytest.raises(ValueError, match="no kept class to remap onto"):
        farthest_kept_class(family, forget_remain[0], list(range(family.num_classes())))


def test_erase_remaps_onto_the_farthest_kept_class_and_records_it(fresh_accelerate_state):
    pipe = load_pipeline("digits-ddpm")
    family = family_for(pipe)
    target = resolve_data(None, family, ["three"], preset=preset_for(pipe), seed=SHORT.seed)
    expected = family.condition_name(farthest_kept_class(family, target.forget, target.conditions, seed=SHORT.seed))
    result = erase(pipe, "three", training=SHORT)
    assert result.config["method_config"]["forget_loss"] == "remap"
    assert result.config["erased"]["anchor_concept"] == expected != "three"


def test_a_named_remap_class_is_used_as_given(fresh_accelerate_state):
    result = erase(load_pipeline("digits-ddpm"), "three", method=SFROnConfig(remap_target="seven"), training=SHORT)
    assert result.config["erased"]["anchor_concept"] == "seven"
