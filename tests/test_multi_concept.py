"""Erasing several concepts at once: the data holds every one's images (and the remain set none), no method draws a
forgotten condition as a target, the command line takes several, and the export and the judge report each."""

import json

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState

from sfr_diffusion import DataArguments, SFROnConfig, erase, load_pipeline
from sfr_diffusion.cli import dataclass_from_args
from sfr_diffusion.commands.erase import EraseCommand, cli, concepts_for, default_output_dir, main, parse_args
from sfr_diffusion.commands.evaluate import main as evaluate
from sfr_diffusion.data import BatchSampler
from sfr_diffusion.digits.prompts import digit_prompts
from sfr_diffusion.families import family_for
from sfr_diffusion.files import default_export_name
from sfr_diffusion.methods import ESD, RL, ESDConfig, RLConfig, SalUn, SalUnConfig, SFROn
from sfr_diffusion.presets import preset_for
from sfr_diffusion.sources import concept_names, default_prompts, resolve_data
from sfr_diffusion.testing.data import random_captioned_images
from sfr_diffusion.testing.layouts import stable_diffusion_pipeline
from sfr_diffusion.text_data import split_by_caption

FORGOTTEN = {3, 7}
SHORT = ["--max_train_steps", "1", "--forget_batch_size", "4", "--remain_batch_size", "4", "--skip_eval"]


def labels_of(images) -> np.ndarray:
    return np.asarray(images.dataset[images.label_column])[images.rows]


@pytest.fixture
def two_classes(pipeline):
    """The forget and remain data of erasing "three" and "seven" from a tiny untrained digits DDPM."""
    family = family_for(pipeline)
    return family, resolve_data(None, family, ["three", "7"], preset=preset_for(pipeline))


@pytest.fixture
def fresh_state():
    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def test_two_classes_forget_exactly_both_and_remain_neither(two_classes, digits_train):
    family, target = two_classes
    forget, remain = labels_of(target.forget), labels_of(target.remain)
    all_labels = np.asarray(digits_train["label"])
    assert set(forget.tolist()) == FORGOTTEN and len(forget) == np.isin(all_labels, list(FORGOTTEN)).sum()
    assert not FORGOTTEN & set(remain.tolist()) and len(forget) + len(remain) == len(all_labels)
    assert target.names == ["three", "seven"] and target.conditions == [3, 7]  # "7" is recorded by its name
    assert target.name == "three, seven"
    with pytest.raises(ValueError, match="read .conditions"):
        target.condition  # noqa: B018 - one condition is ambiguous here
    assert target.summary(family) == {"concepts": ["three", "seven"], "class_ids": [3, 7]}


def test_one_concept_keeps_the_fields_exports_always_had(pipeline):
    family = family_for(pipeline)
    target = resolve_data(None, family, "three", preset=preset_for(pipeline))
    assert target.names == ["three"] and target.condition == 3 and target.name == "three"
    assert target.summary(family) == {"concept": "three", "class_id": 3}


def test_a_forget_remain_pair_must_keep_the_forgotten_classes_apart(pipeline, digits_train):
    family = family_for(pipeline)
    labels = np.asarray(digits_train["label"])
    forget = digits_train.select(np.flatnonzero(np.isin(labels, [3, 7])))
    remain = digits_train.select(np.flatnonzero(~np.isin(labels, [3, 7])))
    target = resolve_data((forget, remain), family, ["three", "seven"])
    assert set(labels_of(target.forget).tolist()) == FORGOTTEN
    with pytest.raises(ValueError, match="must say which image is which"):
        resolve_data((forget.remove_columns("label"), remain), family, ["three", "seven"])
    with pytest.raises(ValueError, match=r"remain set holds forgotten classes \['seven'\]"):
        resolve_data((forget.filter(lambda r: r["label"] == 3), digits_train.filter(lambda r: r["label"] != 3)),
                     family, ["three", "seven"])  # fmt: skip
    with pytest.raises(ValueError, match=r"holds classes \['seven'\] that are not erased"):
        resolve_data((forget, remain), family, ["three"])


def batches(family, target, size: int = 64):
    forget = BatchSampler(target.forget, family, size, seed=0, stream=0).batch(0)
    remain = BatchSampler(target.remain, family, size, seed=0, stream=1).batch(0)
    assert set(forget.labels.tolist()) == FORGOTTEN  # the batch mixes both forgotten classes
    return forget, remain


def recorded_labels(module):
    """Hook `module`; returns the list each forward call's class labels are appended to, and the hook's handle."""
    calls = []
    handle = module.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append(kwargs["class_labels"].clone()), with_kwargs=True
    )
    return calls, handle


@pytest.mark.parametrize("method_class", [RL, SalUn], ids=["rl", "salun"])
def test_random_labelling_never_targets_a_forgotten_class(two_classes, method_class):
    """RL and SalUn pull each forget sample (under its own class) onto the prediction under a remain batch's class:
    never three or seven, whichever of the two the sample is."""
    family, target = two_classes
    config = {RL: RLConfig, SalUn: SalUnConfig}[method_class]()
    method = method_class(config, family)
    forget, remain = batches(family, target)
    calls, handle = recorded_labels(family.denoiser)
    try:
        method.loss(method.phases[0], family.denoiser, {"forget": forget, "remain": remain}, step=0, total_steps=1,
                    reduce_sum=lambda v: v, num_processes=1)  # fmt: skip
    finally:
        handle.remove()
    wrong, own = calls[0], calls[1]  # the target (no gradient), then the forgotten side
    assert not FORGOTTEN & set(wrong.tolist()) and len(set(wrong.tolist())) > 3
    assert torch.equal(own, forget.labels)  # each sample under its own label, both classes


def test_remap_others_never_targets_a_forgotten_class(two_classes):
    family, target = two_classes
    method = SFROn(SFROnConfig(forget_loss="remap_others", use_mask=False), family)
    forget, remain = batches(family, target)
    calls, handle = recorded_labels(method.original.module)
    try:
        method.loss(method.phases[0], family.denoiser, {"forget": forget, "remain": remain}, step=0, total_steps=1,
                    reduce_sum=lambda v: v, num_processes=1)  # fmt: skip
    finally:
        handle.remove()
    (targets,) = calls
    assert set(targets.tolist()) <= set(remain.labels.tolist()) and not FORGOTTEN & set(targets.tolist())


def test_every_process_starts_the_adversarial_embedding_from_the_global_batchs_first_condition(
    two_classes, monkeypatch
):
    """Robust SFR-on's embedding starts from one condition of a batch that mixes several; each process holds a
    different share, so the start must not depend on it (the summed steps then keep the processes together)."""
    family, target = two_classes
    sampler = BatchSampler(target.forget, family, 8, seed=0, stream=0)
    differs = None
    for step in range(8):
        whole, shares = sampler.batch(step), [sampler.batch(step, index, 2) for index in range(2)]
        assert [share.lead_label for share in shares] == [whole.lead_label] * 2 == [int(whole.labels[0])] * 2
        if int(shares[1].labels[0]) != whole.lead_label:
            differs = shares[1]
    assert differs is not None  # some step gives the second process a share that starts with the other class
    started = []
    condition_embedding = family.condition_embedding
    monkeypatch.setattr(family, "condition_embedding", lambda c: started.append(c) or condition_embedding(c))
    method = SFROn(SFROnConfig(adversarial_steps=1), family)
    method.adversarial_embedding(family.encode(differs.images), differs.labels, differs, reduce_sum=lambda v: v)
    assert started == [differs.lead_label] != [int(differs.labels[0])]


def test_esd_guides_each_sample_away_from_its_own_class(two_classes):
    family, target = two_classes
    method = ESD(ESDConfig(), family)
    forget, _ = batches(family, target)
    calls, handle = recorded_labels(method.original.module)
    try:
        method.loss(method.phases[0], family.denoiser, forget, step=0, total_steps=1, reduce_sum=lambda v: v,
                    num_processes=1)  # fmt: skip
    finally:
        handle.remove()
    conditional, unconditional = calls
    assert torch.equal(conditional, forget.labels) and set(unconditional.tolist()) == {family.null_class_id}


def test_a_remap_onto_an_erased_class_is_refused_before_the_data(pipeline, monkeypatch):
    monkeypatch.setattr("sfr_diffusion.erasure.resolve_data", lambda *a, **k: pytest.fail("reached the data"))
    with pytest.raises(ValueError, match=r"remap target 'seven' is erased here"):
        erase(pipeline, ["three", "seven"], method=SFROnConfig(forget_loss="remap", remap_target="seven"))


@pytest.mark.parametrize(
    ("concept", "message"),
    [
        ([], "No concept to erase"),
        (["three", " "], r"The concept is empty \(item 2"),
        (["three", "three"], "'three' is given twice"),
        (("three", "3"), r"'three' and '3' are the same class \(3\)"),
        (["three", "eleven"], "Unknown class 'eleven'"),
    ],
)
def test_bad_concept_lists_fail_before_any_work(pipeline, monkeypatch, concept, message):
    monkeypatch.setattr("sfr_diffusion.erasure.build_accelerator", lambda *a: pytest.fail("reached the accelerator"))
    with pytest.raises(ValueError, match=message):
        erase(pipeline, concept)


def test_a_single_string_is_one_concept_as_before():
    assert concept_names("three,seven") == ["three,seven"] and concept_names(3) == ["3"]
    assert concept_names(("a cat", " a dog ")) == ["a cat", "a dog"]


def test_text_default_prompts_are_each_concepts_and_remain_names_none():
    """Without a preset: every concept's templates are forget prompts; generic remain prompts that are forget
    prompts or name a concept are dropped. The digits SD's preset: the two digits' captions, and no remain caption
    of either."""
    forget, remain = default_prompts(["a cat", "a dog"])
    assert "a photo of a cat" in forget and "a photo of a dog" in forget
    assert not set(forget) & set(remain) and not [p for p in remain if "cat" in p or "dog" in p] and remain

    from sfr_diffusion.digits.preset import DIGITS_PRESET

    forget, remain = default_prompts(["three", "seven"], DIGITS_PRESET)
    assert forget == digit_prompts(3) + digit_prompts(7)
    assert not (set(digit_prompts(3)) | set(digit_prompts(7))) & set(remain)
    assert set(digit_prompts(5)) <= set(remain) and "a blank image" in remain


def test_text_concepts_from_captions_forget_any_named_and_remain_none():
    sd = stable_diffusion_pipeline("tiny", seed=0)
    family = family_for(sd)
    captions = ["a photo of a cat", "a dog asleep", "a red car", "a cat and a dog", "a bowl of fruit"]
    data = random_captioned_images(10, 16, captions)
    forget_rows, _ = split_by_caption(data, ["cat", "dog"])
    named = ["a cat and a dog", "a dog asleep", "a photo of a cat"]
    assert sorted({data[int(i)]["text"] for i in forget_rows}) == named
    with pytest.raises(ValueError, match="No caption in column 'text' mentions 'horse'"):
        split_by_caption(data, ["cat", "horse"])

    target = resolve_data(data, family, ["cat", "dog"])
    summary = target.summary(family)
    assert summary["concepts"] == ["cat", "dog"]
    assert summary["forget_prompts"] == named
    assert summary["remain_prompts"] == ["a bowl of fruit", "a red car"]
    assert not set(labels_of(target.forget).tolist()) & set(labels_of(target.remain).tolist())


def test_text_prompts_given_twice_are_refused_before_generating(monkeypatch):
    sd = stable_diffusion_pipeline("tiny", seed=0)
    monkeypatch.setattr("sfr_diffusion.sources.generate_images", lambda *a, **k: pytest.fail("generated images"))
    options = DataArguments(forget_prompts=["a cat", "a dog"], remain_prompts=["a dog", "a red car"])
    with pytest.raises(ValueError, match=r"remain prompts \['a dog'\] are also erased"):
        resolve_data(options, family_for(sd), ["a cat", "a dog"])


def test_the_command_line_takes_several_concepts():
    def command(*argv):
        return dataclass_from_args(EraseCommand, parse_args(list(argv)))

    assert command().concept == "three" and command("--concept", "seven").concept == ["seven"]
    assert command("--concept", "three,seven").concept == ["three,seven"]
    assert command("--concept", "a cat", "a dog").concept == ["a cat", "a dog"]
    assert command("--concept", "a cat", "--concept", "a dog").concept == ["a cat", "a dog"]
    assert default_output_dir(command("--concept", "three,seven")) == default_output_dir(
        command("--concept", "three", "seven")
    )
    assert default_output_dir(command("--concept", "three,seven")).name == "digits-ddpm-erase-three-seven"
    assert concepts_for(["three,seven"], text_conditioned=False) == ["three", "seven"]
    assert concepts_for(["seven"], text_conditioned=False) == "seven"  # one concept: a string, as before
    assert concepts_for(["a cat, oil painting", "a dog"], text_conditioned=True) == ["a cat, oil painting", "a dog"]
    assert default_export_name("m", ["a cat", "a dog"]) == "m-erase-a_cat-a_dog"
    long = default_export_name("m", [f"concept number {i}" for i in range(20)])
    assert len(long) < 100 and long != default_export_name("m", [f"concept number {i}" for i in range(21)])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--concept", "three,"], "--concept 'three,' has an empty item"),
        (["--concept", "three,,seven"], "--concept 'three,,seven' has an empty item"),
        (["--concept", "three,three"], "'three' is given twice"),
        (["--concept", "three", "3"], "'three' and '3' are the same class (3)"),
        (["--concept", "three,eleven"], "Unknown class 'eleven'"),
        (["--concept", "three", ""], "has an empty value"),
    ],
)
def test_bad_concepts_on_the_command_line_are_one_line(argv, message, tmp_path, monkeypatch, capsys, fresh_state):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sfr_diffusion.digits.preset.load_digits_dataset", lambda *a: pytest.fail("loaded data"))
    capsys.readouterr()
    assert cli([*SHORT, *argv]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines[-1].startswith("erase_concept.py: error: ") and message in lines[-1], lines
    assert not list(tmp_path.iterdir())  # nothing written


def test_erase_three_and_seven_from_the_bundled_ddpm_end_to_end(tmp_path, monkeypatch, fresh_state):
    """`--concept three,seven` on the bundled digits DDPM: a short run, judged briefly; the export records both
    concepts, each one's FA, and the model card lists both."""
    monkeypatch.chdir(tmp_path)
    options = ["--max_train_steps", "30", "--forget_batch_size", "32", "--remain_batch_size", "32",
               "--eval_samples_per_class", "10", "--num_inference_steps", "10"]  # fmt: skip
    result = main(["--concept", "three,seven", *options])
    folder = tmp_path / "outputs" / "digits-ddpm-erase-three-seven"
    config = json.loads((folder / "unlearning_config.json").read_text())
    assert config["erased"] == {"concepts": ["three", "seven"], "class_ids": [3, 7], "anchor_concept": "six"}
    before, after = config["metrics"]["before"], config["metrics"]["after"]
    assert before["forget_classes"] == [3, 7] and set(after["FA_per_concept"]) == {"three", "seven"}
    assert before["FA_per_concept"] == {"three": before["per_class_accuracy"]["3"],
                                        "seven": before["per_class_accuracy"]["7"]}  # fmt: skip
    assert min(before["FA_per_concept"].values()) >= 0.9 and max(after["FA_per_concept"].values()) <= 0.2, after
    brief = result.brief()
    assert brief["erased"] == ["three", "seven"] and set(brief["after"]["FA_per_concept"]) == {"three", "seven"}
    card = (folder / "README.md").read_text()
    assert "`three`, `seven` erased from" in card and "| FA (seven) |" in card
    assert torch.equal(load_pipeline(folder).unet.class_embedding.weight, result.pipeline.unet.class_embedding.weight)
    judged = evaluate(  # sfr-evaluate reads the erased concepts from the export
        [str(folder), "--eval_samples_per_class", "2", "--num_inference_steps", "2"]
    )
    assert judged["forget_classes"] == [3, 7]
