"""The benchmark scripts run (tiny settings) and compute what they report from what they measured."""

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"


def load(name: str):
    """A benchmark script or its sibling `reporting`, imported as `python benchmarks/<name>.py` finds its imports:
    with benchmarks/ on sys.path (they live outside the package, and import `reporting` as a sibling)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


def test_gpu_cost_script_runs_on_tiny_configs():
    report = load("benchmark_gpu").main(
        ["--tiny", "--iterations", "2", "--batch_size", "4", "--mixed_precision", "no"]
    )
    sfr, ft = report["sfr_on"], report["ft"]
    assert sfr["seconds_per_iteration"] > 0 and ft["seconds_per_iteration"] > 0
    assert report["ratio_sfr_on_to_ft"] == pytest.approx(sfr["seconds_per_iteration"] / ft["seconds_per_iteration"])
    assert sfr["mask_seconds"] > 0 and sfr["parameters"] == ft["parameters"]


def test_gpu_cost_script_runs_stable_diffusion_on_tiny_configs(tmp_path):
    output = tmp_path / "BENCHMARKS.md"
    argv = ["--family", "sd", "--tiny", "--iterations", "2", "--batch_size", "2", "--mixed_precision", "no",
            "--no_cudnn_attention"]  # fmt: skip
    report = load("benchmark_gpu").main([*argv, "--write", "--output", str(output)])
    assert torch.backends.cuda.cudnn_sdp_enabled(), "turned off while erasing only"
    sfr, ft = report["sfr_on"], report["ft"]
    assert report["family"] == "sd" and report["batch_size"] == 2
    assert sfr["seconds_per_iteration"] > 0 and ft["seconds_per_iteration"] > 0
    assert report["ratio_sfr_on_to_ft"] == pytest.approx(sfr["seconds_per_iteration"] / ft["seconds_per_iteration"])
    # SD's configuration of the method: the concept's captions are remapped onto the empty prompt.
    assert sfr["method_config"]["forget_loss"] == "remap" and sfr["method_config"]["remap_target"] == ""
    assert sfr["method_config"]["adversarial_steps"] == 3  # the SD family's default, measured as users get it
    assert sfr["erased"]["forget_prompts"] == ["a photo of a cat"] and sfr["erased"]["anchor_concept"] == ""
    assert sfr["mask_seconds"] > 0 and sfr["parameters"] == ft["parameters"]
    text = output.read_text()
    assert "<!-- gpu-cost-sd:start -->" in text and "<!-- gpu-cost-sd:end -->" in text
    assert 'remap of the captions naming "cat" onto the empty prompt, 3 adversarial steps' in text
    assert "| tiny sd | 0.79M | 2 |" in text
    assert "gradient checkpointing off, cuDNN attention off;" in text


def test_gpu_cost_script_runs_sdxl_sd3_and_flux_on_tiny_configs(tmp_path):
    from sfr_diffusion.testing.layouts import flux_pipeline

    script = load("benchmark_gpu")
    output = tmp_path / "BENCHMARKS.md"
    argv = ["--family", "sdxl", "sd3", "flux", "--tiny", "--iterations", "1", "--warmup", "1", "--batch_size", "1",
            "--mixed_precision", "no", "--write", "--output", str(output)]  # fmt: skip
    report = script.main(argv)
    families = report["families"]
    assert list(families) == ["sdxl", "sd3", "flux"] and report["device"] == "CPU"
    for name, family in families.items():
        runs = [family] if name != "flux" else family["measured"]
        for run in runs:
            sfr, ft = run["sfr_on"], run["ft"]
            assert sfr["seconds_per_iteration"] > 0 and ft["seconds_per_iteration"] > 0
            assert sfr["mask_seconds"] > 0 and sfr["parameters"] == ft["parameters"]
            # Every text-to-image family is erased the same way: its captions remapped onto the empty prompt.
            assert sfr["method_config"]["forget_loss"] == "remap" and sfr["erased"]["anchor_concept"] == ""
            assert sfr["erased"]["forget_prompts"] == ["a photo of a cat"]
    # Flux: measured at 2 + 4 and 4 + 8 blocks and extrapolated to FLUX.1-dev's 19 + 38, whose parameter count the
    # line through the measured ones gives exactly.
    flux = families["flux"]
    assert [(m["double_blocks"], m["single_blocks"]) for m in flux["measured"]] == [(2, 4), (4, 8)]
    assert flux["extrapolated_to_blocks"] == [19, 38]
    for depth, measured in zip((2, 4, 19), [*flux["measured"], flux], strict=True):
        layout = flux_pipeline("tiny", overrides=script.flux_overrides(depth), device="meta")
        expected = sum(p.numel() for p in layout.transformer.parameters())
        assert measured["sfr_on"]["parameters"] == measured["ft"]["parameters"] == expected
    assert flux["ratio_sfr_on_to_ft"] == pytest.approx(
        flux["sfr_on"]["seconds_per_iteration"] / flux["ft"]["seconds_per_iteration"]
    )
    text = output.read_text()  # one section for the three families
    assert text.count(":start -->") == 1 and "<!-- gpu-cost-sdxl-sd3-flux:start -->" in text
    for row in ("| tiny sdxl |", "| tiny sd3 |", "| tiny flux, 2 + 4 blocks |", "| tiny flux, 4 + 8 blocks |",
                "| tiny flux, 19 + 38 blocks, extrapolated |"):  # fmt: skip
        assert row in text


def test_gpu_cost_all_families_in_one_section_with_flux_extrapolated_per_block(tmp_path, monkeypatch):
    """--all measures every family in one run; Flux's quantities lie on the line through its measured depths."""
    script = load("benchmark_gpu")
    calls = []

    def fake_time_method(method_name, family_name, args, batch_size, overrides=None, lora_rank=None):
        depth = overrides["transformer"]["num_layers"] if overrides else 1
        calls.append((family_name, method_name, depth, batch_size))
        per_step = {"sfr_on": 0.2, "ft": 0.1}[method_name]
        return {"seconds_per_iteration": per_step * (1 + depth), "peak_memory_gib": None, "mask_seconds": 1.0,
                "parameters": 1_000_000 + 300_000 * depth, "method_config": {"forget_loss": "remap"},
                "erased": {"concept": "x"}}  # fmt: skip

    monkeypatch.setattr(script, "time_method", fake_time_method)
    output = tmp_path / "BENCHMARKS.md"
    report = script.main(["--all", "--tiny", "--write", "--output", str(output)])
    assert list(report["families"]) == ["dit", "sd", "sdxl", "sd3", "flux"]
    defaults = {"dit": 32, "sd": 8, "sdxl": 4, "sd3": 4, "flux": 2}
    expected = [
        (name, method, 1, defaults[name]) for name in ("dit", "sd", "sdxl", "sd3") for method in ("sfr_on", "ft")
    ]
    expected += [("flux", method, depth, 2) for depth in (2, 4) for method in ("sfr_on", "ft")]
    assert calls == expected
    flux = report["families"]["flux"]
    assert flux["sfr_on"]["seconds_per_iteration"] == pytest.approx(0.2 * 20)
    assert flux["ft"]["seconds_per_iteration"] == pytest.approx(0.1 * 20)
    assert flux["sfr_on"]["parameters"] == 1_000_000 + 300_000 * 19 and flux["ratio_sfr_on_to_ft"] == pytest.approx(2)
    text = output.read_text()
    assert text.count(":start -->") == 1 and "<!-- gpu-cost-all:start -->" in text
    assert "<!-- gpu-cost-all:end -->" in text
    assert "## Cost at real size: dit, sd, sdxl, sd3, flux, CPU" in text
    assert "| tiny flux, 19 + 38 blocks, extrapolated | 6.7M | 2 | 4.000 | 2.000 | 2.00 | n/a | n/a |" in text


def test_gpu_cost_flux_extrapolated_past_the_card_says_so(tmp_path, monkeypatch):
    script = load("benchmark_gpu")

    def fake_time_method(method_name, family_name, args, batch_size, overrides=None, lora_rank=None):
        depth = overrides["transformer"]["num_layers"]
        return {"seconds_per_iteration": 1.0 * depth, "peak_memory_gib": 20.0 + 10.0 * depth, "mask_seconds": 1.0,
                "parameters": 600_000_000 * depth, "method_config": {"forget_loss": "remap"},
                "erased": {"concept": "x"}}  # fmt: skip

    monkeypatch.setattr(script, "time_method", fake_time_method)
    monkeypatch.setattr(script, "card_memory_gib", lambda: 140.0)  # as on a GPU
    output = tmp_path / "BENCHMARKS.md"
    report = script.main(["--family", "flux", "--tiny", "--write", "--output", str(output)])
    assert report["sfr_on"]["peak_memory_gib"] == pytest.approx(210.0)
    assert report["fits_one_card"] == {"sfr_on": False, "ft": False}
    text = output.read_text()
    assert "| tiny flux, 4 + 8 blocks | 2,400M | 2 | 4.000 | 4.000 | 1.00 | 60.0 GiB | 60.0 GiB |" in text
    assert "| 210.0 GiB (more than the card's 140 GiB) |" in text
    assert "needs more memory than one card has" in text


def test_gpu_cost_a_family_out_of_memory_is_reported_and_the_others_are_measured(tmp_path, monkeypatch):
    script = load("benchmark_gpu")

    def fake_time_method(method_name, family_name, args, batch_size, overrides=None, lora_rank=None):
        if family_name == "sdxl":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return {"seconds_per_iteration": 1.0, "peak_memory_gib": None, "mask_seconds": 1.0, "parameters": 10**9,
                "method_config": {"forget_loss": "remap"}, "erased": {"concept": "x"}}  # fmt: skip

    monkeypatch.setattr(script, "time_method", fake_time_method)
    output = tmp_path / "BENCHMARKS.md"
    report = script.main(["--family", "sd", "sdxl", "sd3", "--tiny", "--write", "--output", str(output)])
    families = report["families"]
    assert families["sdxl"]["out_of_memory"] == "CUDA out of memory. Tried to allocate 20.00 GiB"
    assert "sfr_on" not in families["sdxl"]
    assert families["sd"]["ratio_sfr_on_to_ft"] == families["sd3"]["ratio_sfr_on_to_ft"] == pytest.approx(1)
    text = output.read_text()
    assert "| tiny sdxl | | 4 | out of memory at batch 4 |" in text and "| tiny sd3 | 1,000M | 4 |" in text


def test_gpu_cost_full_weights_and_lora_in_one_run(tmp_path, monkeypatch):
    """--variants full lora: each family measured training its weights, then LoRA adapters, in one section."""
    script = load("benchmark_gpu")
    calls = []

    def fake_time_method(method_name, family_name, args, batch_size, overrides=None, lora_rank=None):
        depth = overrides["transformer"]["num_layers"] if overrides else None
        calls.append((family_name, method_name, depth, lora_rank))
        return {"seconds_per_iteration": 1.0 if lora_rank else 2.0, "peak_memory_gib": None, "mask_seconds": 1.0,
                "parameters": 10**9, "method_config": {"forget_loss": "remap"},
                "erased": {"concept": "x"}}  # fmt: skip

    monkeypatch.setattr(script, "time_method", fake_time_method)
    output = tmp_path / "BENCHMARKS.md"
    argv = ["--family", "sd", "flux", "--variants", "full", "lora", "--lora_rank", "4", "--tiny", "--write",
            "--output", str(output)]  # fmt: skip
    report = script.main(argv)
    assert list(report["families"]) == ["sd", "sd-lora", "flux", "flux-lora"]
    assert report["families"]["sd-lora"]["variant"] == "lora" and report["families"]["sd-lora"]["lora_rank"] == 4
    expected = [("sd", m, None, rank) for rank in (None, 4) for m in ("sfr_on", "ft")]
    expected += [("flux", m, depth, rank) for rank in (None, 4) for depth in (2, 4) for m in ("sfr_on", "ft")]
    assert calls == expected
    text = output.read_text()
    assert "<!-- gpu-cost-sd-flux-full-lora:start -->" in text and "(full weights and LoRA)" in text
    assert "| tiny sd | 1,000M | 8 | 2.000 |" in text and "| tiny sd, LoRA rank 4 | 1,000M | 8 | 1.000 |" in text
    assert "| tiny flux, LoRA rank 4, 19 + 38 blocks, extrapolated |" in text


def test_gpu_cost_flux_at_its_whole_depth_is_measured_not_extrapolated(monkeypatch):
    """--flux_depths 19 (under FSDP on several cards): the whole transformer, one measurement, no extrapolation."""
    script = load("benchmark_gpu")
    depths = []

    def fake_time_method(method_name, family_name, args, batch_size, overrides=None, lora_rank=None):
        depths.append(overrides["transformer"]["num_layers"])
        return {"seconds_per_iteration": 1.0, "peak_memory_gib": None, "mask_seconds": 1.0, "parameters": 10**9,
                "method_config": {"forget_loss": "remap"}, "erased": {"concept": "x"}}  # fmt: skip

    monkeypatch.setattr(script, "time_method", fake_time_method)
    report = script.main(["--family", "flux", "--flux_depths", "19", "--tiny"])
    assert depths == [19, 19] and "measured" not in report and "extrapolated_to_blocks" not in report


def test_gpu_cost_lora_variant_runs_on_a_tiny_config():
    argv = ["--family", "sd", "--variants", "lora", "--tiny", "--iterations", "1", "--warmup", "1", "--batch_size",
            "2", "--mixed_precision", "no"]  # fmt: skip
    report = load("benchmark_gpu").main(argv)
    assert report["variant"] == "lora" and report["model"] == "tiny sd, LoRA rank 8"
    assert report["sfr_on"]["seconds_per_iteration"] > 0 and report["ft"]["seconds_per_iteration"] > 0


def test_gpu_cost_batch_size_defaults_per_family():
    script = load("benchmark_gpu")
    assert script.parse_args(["--tiny"]).batch_sizes == {"dit": 32}
    assert script.parse_args(["--family", "sd", "--tiny"]).batch_sizes == {"sd": 8}
    assert script.parse_args(["--family", "sd", "--tiny", "--batch_size", "3"]).batch_sizes == {"sd": 3}
    everything = script.parse_args(["--all", "--tiny"])
    assert everything.family == ["dit", "sd", "sdxl", "sd3", "flux"]
    assert everything.batch_sizes == {"dit": 32, "sd": 8, "sdxl": 4, "sd3": 4, "flux": 2}
    some = script.parse_args(["--family", "sdxl", "flux", "--tiny", "--batch_size", "1"])
    assert some.batch_sizes == {"sdxl": 1, "flux": 1}


@pytest.mark.parametrize(
    "argv",
    [
        ["--flux_depths", "2", "2"],
        ["--flux_depths", "0", "2"],
        ["--flux_depths", "4"],
        ["--family", "sd", "sd"],
        ["--batch_size", "0"],
        ["--variants", "lora", "lora"],
        ["--lora_rank", "0"],
    ],
)
def test_gpu_cost_bad_options_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        load("benchmark_gpu").parse_args([*argv, "--tiny"])
    assert "error:" in capsys.readouterr().err


def test_gpu_cost_sd_data_splits_by_caption():
    from sfr_diffusion.families import family_for
    from sfr_diffusion.sources import resolve_data
    from sfr_diffusion.testing.layouts import stable_diffusion_pipeline

    family = family_for(stable_diffusion_pipeline("tiny"))
    dataset, concept, settings = load("benchmark_gpu").erasure_data(family, 6)
    assert concept == "cat" and settings == {"forget_loss": "remap", "remap_target": ""}
    target = resolve_data(dataset, family, concept)  # what erase() makes of them
    assert len(target.forget) == len(target.remain) == 3 and target.anchor == ""
    images, labels = target.forget.load([0, 1, 2])
    assert images.shape == (3, 3, 16, 16) and set(labels.tolist()) == {family.prompt_id("a photo of a cat")}
    assert set(target.remain.load([0, 1, 2])[1].tolist()) == {family.prompt_id("a photo of a dog")}


def test_gpu_cost_dit_data_forgets_class_zero():
    from sfr_diffusion.families import family_for
    from sfr_diffusion.sources import resolve_data
    from sfr_diffusion.testing.layouts import dit_pipeline

    family = family_for(dit_pipeline("tiny"))
    dataset, concept, settings = load("benchmark_gpu").erasure_data(family, 6)
    assert settings == {}  # DiT's own configuration: the family's default forget loss
    target = resolve_data(dataset, family, concept)
    assert target.condition == 0 and len(target.forget) == len(target.remain) == 3
    assert set(target.remain.load([0, 1, 2])[1].tolist()) == {1}


def test_iterations_to_forget_needs_both_fa_and_ra():
    benchmark = load("reporting")

    history = [
        {"step": 0, "FA": 1.0, "RA": 0.99},
        {"step": 10, "FA": 0.0, "RA": 0.95},  # forgotten, but the rest is damaged
        {"step": 20, "FA": 0.02, "RA": 0.99},  # the rest is fine, not yet forgotten
        {"step": 30, "FA": 0.01, "RA": 0.98},
    ]
    assert benchmark.iterations_to_forget(history, base_ra=0.99) == 30
    assert benchmark.iterations_to_forget(history[:3], base_ra=0.99) is None


def test_sections_are_replaced_in_place(tmp_path):
    benchmark = load("reporting")

    path = tmp_path / "BENCHMARKS.md"
    benchmark.write_section(path, "<!-- a:start -->\nold a\n<!-- a:end -->\n")
    benchmark.write_section(path, "<!-- b:start -->\nb\n<!-- b:end -->\n")
    benchmark.write_section(path, "<!-- a:start -->\nnew a\n<!-- a:end -->\n")
    text = path.read_text()
    assert "new a" in text and "old a" not in text and text.index("new a") < text.index("\nb\n")


def test_gap_to_retrain_is_a_total_variation_distance():
    benchmark = load("benchmark")
    same = {"RA": 0.9, "FID": 20.0, "label_distribution": {"3": [0.5, 0.5, 0.0], "4": [0.0, 1.0, 0.0]}}
    assert benchmark.gap_to_retrain(same, same, 3) == {
        "forget_tv": 0.0,
        "remain_tv": 0.0,
        "RA_difference": 0.0,
        "FID_difference": 0.0,
    }
    other = {"RA": 0.8, "FID": 25.0, "label_distribution": {"3": [0.0, 0.0, 1.0], "4": [0.0, 0.5, 0.5]}}
    gap = benchmark.gap_to_retrain(other, same, 3)
    assert gap["forget_tv"] == 1.0 and gap["remain_tv"] == 0.5  # disjoint; half the mass moved
    assert gap["RA_difference"] == pytest.approx(-0.1) and gap["FID_difference"] == 5.0


def test_sweep_prefers_forgetting_soonest_then_lower_fa_then_higher_ra():
    benchmark = load("benchmark")

    def row(reached, fa, ra):
        return {"iterations_to_forget": reached, "history": [{"step": 0, "FA": 1.0, "RA": 1.0}, {"FA": fa, "RA": ra}]}

    late, early, never_low_fa, never_high_fa = (
        row(30, 0.0, 1.0),
        row(10, 0.0, 0.99),
        row(None, 0.1, 0.5),
        row(None, 0.5, 1.0),
    )
    assert min([late, never_low_fa, early], key=benchmark.sweep_key) is early
    assert min([never_high_fa, never_low_fa], key=benchmark.sweep_key) is never_low_fa
    assert min([row(None, 0.1, 0.9), row(None, 0.1, 0.95)], key=benchmark.sweep_key)["history"][-1]["RA"] == 0.95


def test_methods_benchmark_quick_mode(tmp_path):
    """The CI run of the comparison: the sweep, retrain, the gap, the guidance sweep, the attacks, several digits at
    once, the memory probe and the report."""
    benchmark = load("benchmark")
    output = tmp_path / "BENCHMARKS.md"
    payload = benchmark.main(["--quick", "--output", str(output), "--plots_dir", str(tmp_path)])
    (result,) = payload["results"]
    assert result["family"] == "ddpm" and result["iterations"] == 4
    grid = result["learning_rate_grid"]
    assert grid == pytest.approx([1e-3, 3e-3])  # the DDPM default × the quick factors
    runs = result["runs"]
    # The sweep: every swept method at every rate on digit 3; the ablation R once, at SFR-on's chosen rate.
    sweep = {(r["method"], r["learning_rate"]) for r in runs if r.get("sweep")}
    assert sweep == {(m, lr) for m in ("sfr_on", "ft") for lr in grid}
    (ablation,) = [r for r in runs if r["method"] == "R"]
    assert ablation["learning_rate"] == result["best_learning_rate"]["sfr_on"]
    retrained = result["retrain"]["3"]
    for r in [*runs, result["multi"]]:
        assert [h["step"] for h in r["history"]] == [0, 2, 4]
        assert r["seconds_per_iteration"] > 0
        reached = benchmark.iterations_to_forget(r["history"], r["history"][0]["RA"])
        assert r["iterations_to_forget"] == reached
    for final in [retrained, result["base"]["3"], *(r["final"] for r in runs)]:
        # The whole guidance sweep: 1, 2, 4, 7.5 and the DDPM's own default (1), the worst case over them.
        per_guidance = final["per_guidance"]
        assert list(per_guidance) == ["1.0", "2.0", "4.0", "7.5"] and final["default_guidance"] == 1.0
        assert final["FA_worst"] == max(m["FA"] for m in per_guidance.values())
        assert final["RA_worst"] == min(m["RA"] for m in per_guidance.values())
        assert {m["forget_samples"] for m in per_guidance.values()} == {4}  # --final_forget_samples
        assert {m["remain_samples_per_class"] for m in per_guidance.values()} == {2}  # --final_samples
    for r in runs:
        assert 0 <= r["gap"]["forget_tv"] <= 1 and 0 <= r["gap"]["remain_tv"] <= 1
        at_two = r["final"]["per_guidance"]["2.0"]  # the gap stays at guidance 2
        assert r["gap"]["RA_difference"] == pytest.approx(at_two["RA"] - retrained["per_guidance"]["2.0"]["RA"])
    # Attacks: every final model at its chosen rate and retrain, one tiny budget and seed; not the other sweep rows.
    chosen = [r for r in runs if r["learning_rate"] == result["best_learning_rate"][r["method"]]]
    assert {r["method"] for r in chosen} == {"sfr_on", "ft", "R"}
    assert all("attacks" not in r for r in runs if r not in chosen)
    for attacks in [result["retrain_attacks"]["3"], *(r["attacks"] for r in chosen)]:
        assert set(attacks) == {"inversion", "relearn", "relearn_reset"}
        for kind, record in attacks.items():
            assert record["attack"] == kind and record["seed"] == 0 and record["budget"]["steps"] == 2
            assert [p["step"] for p in record["curve"]] == [0, 2] and record["ASR"] == record["curve"][-1]["FA"]
            assert record["judge"]["settings"]["forget_samples_per_class"] == 4
            assert record["judge"]["settings"]["eval_samples_per_class"] == 1
    # Several digits at once: one SFR-on run erasing 3, 7 and 8, each digit judged at every guidance.
    multi = result["multi"]
    assert multi["method"] == "sfr_on" and multi["digits"] == [3, 7, 8] and "attacks" not in multi
    assert multi["learning_rate"] == result["best_learning_rate"]["sfr_on"]
    assert set(multi["history"][-1]["FA_per_concept"]) == {"three", "seven", "eight"}
    assert {"3", "7", "8"} <= set(multi["final"]["per_guidance"]["7.5"]["per_class_accuracy"])
    assert result["base"]["3,7,8"]["per_guidance"]["2.0"]["forget_classes"] == [3, 7, 8]
    assert {r["mask_seconds"] > 0 for r in runs if r["method"] == "sfr_on"} == {True}
    assert {r["mask_seconds"] for r in runs if r["method"] in ("ft", "R")} == {0.0}  # no mask, no mask time
    for memory in result["peak_memory_bytes"].values():
        assert memory["resident"] > 100 * 2**20  # a fresh Python process with torch
    text = output.read_text()
    assert "<!-- methods-comparison:start -->" in text and "| **retrain** |" in text and "### Verdict" in text
    assert "| FA, worst over guidance | RA, worst over guidance | FID-digits (g 2) |" in text
    assert "| model | g 1 (default) | g 2 | g 4 | g 7.5 | every g |" in text
    assert "| model | inversion ASR | inversion to 50% | relearn ASR |" in text
    assert "### Several digits at once: SFR-on erasing 3, 7 and 8 together" in text
    assert re.search(r"\| DDPM \| 0\.00[13] \|", text)  # SFR-on's chosen rate from the grid
    assert "At every guidance scale (1, 2, 4, 7.5; the pipeline's default 1)" in text
    assert "SFR-on's ASR against retrain's + 5 points and against every baseline's (FT)" in text
    sfr = [r for r in runs if r["method"] == "sfr_on" and r["learning_rate"] == result["best_learning_rate"]["sfr_on"]]
    ft = [r for r in runs if r["method"] == "ft" and r["learning_rate"] == result["best_learning_rate"]["ft"]]
    cost = sfr[0]["seconds_per_iteration"] / ft[0]["seconds_per_iteration"]
    assert f"an SFR-on iteration takes {cost:.2f}× an FT iteration" in text
    assert (tmp_path / "methods_digits_ddpm.png").stat().st_size > 10_000
    results_json = tmp_path / "benchmark_methods.json"
    again = ["--render_only", str(results_json), "--output", str(output), "--plots_dir", str(tmp_path)]
    rendered = benchmark.main(again)
    assert rendered["results"] == json.loads(json.dumps(payload["results"]))
    assert output.read_text() == text  # the sweep, the attacks and the several-digit row render from the JSON alone
    # A run with other settings (here the retrain's steps) cannot merge: it renders into a section of its own, and the
    # main section stays as it was.
    other = json.loads(results_json.read_text())
    other["settings"]["retrain_steps"] += 1
    other_json = tmp_path / "other_settings.json"
    other_json.write_text(json.dumps(other))
    benchmark.main([*again[:2], str(other_json), *again[2:]])
    both = output.read_text()
    assert both.startswith(text.rstrip("\n")) and both.count("<!-- methods-comparison:start -->") == 1
    assert "<!-- methods-comparison-ddpm:start -->" in both and "<!-- methods-comparison-ddpm:end -->" in both
    assert "## SFR-on against the baselines and retrain: DDPM, settings of its own" in both


def verdict_result(sfr_asr: float, ft_asr: float, retrain_asr: float, sfr_fa_at_2: float) -> dict:
    """A one-digit result with SFR-on, FT and retrain, for the verdict's arithmetic."""

    def final(fa_by_scale: dict, ra: float = 0.99) -> dict:
        per_guidance = {
            s: {"FA": fa, "RA": ra, "per_class_accuracy": {"3": fa}, "FID": 20.0} for s, fa in fa_by_scale.items()
        }
        return {
            "per_guidance": per_guidance,
            "default_guidance": 1.0,
            "FA_worst": max(fa_by_scale.values()),
            "RA_worst": ra,
        }

    def attacks(asr: float) -> dict:
        return {"inversion": {"ASR": asr, "steps_to_half": None, "budget": {"steps": 100}}}

    def row(method: str, fa_by_scale: dict, asr: float) -> dict:
        return {
            "method": method,
            "digit": 3,
            "learning_rate": 1e-3,
            "iterations_to_forget": 10,
            "final": final(fa_by_scale),
            "attacks": attacks(asr),
            "gap": {"forget_tv": 0.1, "remain_tv": 0.0},
            "seconds_per_iteration": 1.0,
            "mask_seconds": 0.0,
            "train_seconds": 1.0,
        }

    zero = {"1.0": 0.0, "2.0": 0.0}
    return {
        "family": "ddpm",
        "iterations": 20,
        "best_learning_rate": {"sfr_on": 1e-3, "ft": 1e-3},
        "base": {"3": final({"1.0": 1.0, "2.0": 1.0}, ra=1.0)},
        "retrain": {"3": final(zero)},
        "retrain_attacks": {"3": attacks(retrain_asr)},
        "runs": [row("sfr_on", {"1.0": 0.0, "2.0": sfr_fa_at_2}, sfr_asr), row("ft", zero, ft_asr)],
    }


def test_the_verdict_reports_what_the_numbers_say_either_way():
    benchmark = load("benchmark")

    def verdict(*numbers) -> str:
        return "\n".join(benchmark.verdict([verdict_result(*numbers)], {"digits": [3]}))

    good = verdict(0.04, 0.5, 0.0, 0.0)
    assert "inversion: SFR-on 4, retrain 0: within retrain's + 5 points on 1 of 1 digits" in good
    assert "lower than every baseline's on 1 of 1." in good and "- SFR-on: 1 of 1." in good
    bad = verdict(0.06, 0.06, 0.0, 0.02)  # 6 points above retrain, tied with FT; FA 2% at guidance 2
    assert "within retrain's + 5 points on 0 of 1 digits" in bad
    assert "lower than every baseline's on 0 of 1 (not lower than FT on 3)" in bad
    assert "- SFR-on: 0 of 1; not on digit 3 (g 2: FA 2, RA 99 vs base 100)." in bad
    assert "The others: FT 1 of 1." in bad


def test_holding_at_every_guidance_compares_with_the_base_at_the_same_scale():
    benchmark = load("benchmark")
    base = {"per_guidance": {"1.0": {"RA": 0.9}, "7.5": {"RA": 1.0}}}
    final = {
        "per_guidance": {
            "1.0": {"RA": 0.895, "per_class_accuracy": {"3": 0.0, "7": 0.01}},  # within 1 point of 0.9
            "7.5": {"RA": 0.98, "per_class_accuracy": {"3": 0.0, "7": 0.0}},  # 2 points below 1.0
        }
    }
    assert benchmark.holds_by_guidance(final, base, [3, 7]) == {"1.0": True, "7.5": False}
    final["per_guidance"]["1.0"]["per_class_accuracy"]["7"] = 0.02  # several digits: the highest FA decides
    assert benchmark.holds_by_guidance(final, base, [3, 7])["1.0"] is False


def test_a_resumed_run_that_lost_an_export_erases_again_to_attack_it(tmp_path, monkeypatch):
    """The chosen rate of a sweep is attacked after the sweep; a resumed run has lost the temporary export of a
    finished erasure, so it erases again (same seed, same model) into it, attacks it and removes it."""
    benchmark = load("benchmark")
    args = benchmark.parse_args(["--quick", "--output", str(tmp_path / "B.md")])
    erased, attacked = [], []

    def fake_erase(argv):
        output_dir = Path(argv[argv.index("--output_dir") + 1])
        output_dir.mkdir()
        (output_dir / "model_index.json").write_text("{}")
        erased.append(output_dir)

    def fake_attack(args, path, digit):
        attacked.append((path, digit, (path / "model_index.json").exists()))
        return {"inversion": {"ASR": 0.5}}

    monkeypatch.setattr(benchmark.erase_command, "main", fake_erase)
    monkeypatch.setattr(benchmark, "attacked", fake_attack)
    key = f"digits-ddpm|sfr_on|3|{2e-3!r}"
    args.finished = benchmark.FinishedRuns(tmp_path / "p.json", {"s": 1}, resume=False)
    args.finished.runs[key] = {"method": "sfr_on", "digit": 3}  # finished before the interruption
    row = benchmark.run_one(args, "digits-ddpm", [3], "sfr_on", [], 2e-3, tmp_path, attack=True)
    assert row == {"method": "sfr_on", "digit": 3, "attacks": {"inversion": {"ASR": 0.5}}}
    assert len(erased) == 1 and attacked == [(erased[0], 3, True)] and not erased[0].exists()
    assert args.finished.runs[f"{key}|attacks"] == {"inversion": {"ASR": 0.5}}
    benchmark.run_one(args, "digits-ddpm", [3], "sfr_on", [], 2e-3, tmp_path, attack=True)
    assert len(erased) == 1 and len(attacked) == 1  # both finished: nothing runs again
    args.attack = None  # --no_attacks
    assert "attacks" not in benchmark.run_one(args, "digits-ddpm", [3], "sfr_on", [], 2e-3, tmp_path, attack=True)


def test_benchmark_options_and_their_settings():
    benchmark = load("benchmark")
    args = benchmark.parse_args([])
    assert args.digits == [3, 0, 1, 5, 8] and args.multi_digits == [3, 7, 8]
    counts = (
        "track_samples track_forget_samples final_samples final_forget_samples attack_samples attack_forget_samples"
    )
    assert [getattr(args, name) for name in counts.split()] == [20, 50, 50, 100, 10, 50]
    assert args.attack == benchmark.AttackArguments()  # the library's budget unless told otherwise
    budget = benchmark.parse_args(["--attack_images", "8", "--inversion_steps", "7", "--relearn_steps", "3"]).attack
    assert (budget.attack_images, budget.inversion_steps, budget.relearn_steps) == (8, 7, 3)
    assert benchmark.parse_args(["--no_attacks"]).attack is None
    assert benchmark.parse_args(["--multi_digits"]).multi_digits == []
    quick = benchmark.parse_args(["--quick", "--models", "digits-dit", "--final_samples", "3"])
    assert quick.models == ["digits-dit"] and quick.final_samples == 3 and quick.iterations == 4  # given options win
    # Options this script does not know go to the erase command, whole.
    assert benchmark.parse_args(["--forget_loss", "remap"]).erase_args == ["--forget_loss", "remap"]
    settings = benchmark.run_settings(args)
    assert settings["guidance_scales"] == [1.0, 2.0, 4.0, 7.5] and settings["attack"]["relearn_steps"] == 20
    for other in (["--final_forget_samples", "7"], ["--relearn_steps", "5"], ["--no_attacks"], ["--multi_digits"]):
        assert benchmark.run_settings(benchmark.parse_args(other)) != settings  # a resume with them starts over
    for bad in (
        ["--multi_digits", "3"],
        ["--digits", "3", "3"],
        ["--track_forget_samples", "0"],
        ["--relearn_steps", "0"],
    ):
        with pytest.raises(SystemExit):
            benchmark.parse_args(bad)


def test_per_digit_sfr_on_benchmark_quick_mode(tmp_path):
    script = load("benchmark_sfr_on")
    argv = ["--quick", "--plot_eval_every", "1", "--max_train_steps", "2", "--label", "two steps"]
    (row,) = script.main(["--digits", "3", *argv, "--results_json", str(tmp_path / "3.json")])
    assert row["name"] == "three" and row["steps"] == 2 and [h["step"] for h in row["history"]] == [0, 1, 2]
    assert row["iterations_to_forget"] == load("reporting").iterations_to_forget(row["history"], row["before"]["RA"])
    # What the model draws for the erased digit: the judge's most frequent answer at the pipeline's default guidance.
    shares = row["final"]["per_guidance"]["1.0"]["label_distribution"][3]
    top = max(range(11), key=shares.__getitem__)
    drawn = script.drawn_instead(row["final"], 3)
    assert drawn == f"{top if top < 10 else 'no digit'} ({100 * shares[top]:.0f}%)"
    assert f"| {drawn} |" in script.render_section([row], "command", None, [], "ddpm")
    # Two runs of one setting (one digit each) make one row of the settings comparison, under the runs' label.
    script.main(["--digits", "4", *argv, "--results_json", str(tmp_path / "4.json")])
    output = tmp_path / "BENCHMARKS.md"
    load("compare_sfr_on").main([str(tmp_path / "3.json"), str(tmp_path / "4.json"), "--output", str(output)])
    table = [line for line in output.read_text().splitlines() if line.startswith("| two steps |")]
    assert len(table) == 1 and table[0].startswith("| two steps | 3, 4 | ")
    # An interrupted run resumes: the digits its results file holds are not run again.
    done = json.loads((tmp_path / "3.json").read_text())["rows"]
    rows = script.main(["--digits", "4", "3", *argv, "--results_json", str(tmp_path / "3.json"), "--resume"])
    assert [r["digit"] for r in rows] == [4, 3] and rows[1] == done[0]
    assert [r["digit"] for r in json.loads((tmp_path / "3.json").read_text())["rows"]] == [4, 3]


def test_a_later_run_of_some_methods_replaces_theirs():
    benchmark = load("benchmark")

    def payload(command, methods, seconds):
        runs = [
            {"method": m, "digit": 3, "learning_rate": 1e-3, "seconds_per_iteration": seconds, "sweep": True}
            for m in methods
        ]
        result = {
            "model": "digits-ddpm",
            "iterations": 4,
            "learning_rate_grid": [1e-3],
            "best_learning_rate": dict.fromkeys(methods, 1e-3),
            "peak_memory_bytes": dict.fromkeys(methods, {"resident": seconds, "cuda": None}),
            "runs": runs,
            "minutes": 2.0,
        }
        return {
            "command": command,
            "commit": "c",
            "settings": {"digits": [3]},
            "machine": "m",
            "minutes": 2.0,
            "results": [result],
        }

    merged = benchmark.merge([payload("first", ["sfr_on", "rl", "R"], 1.0), payload("second", ["rl"], 2.0)])
    (result,) = merged["results"]
    assert {(r["method"], r["seconds_per_iteration"]) for r in result["runs"]} == {
        ("sfr_on", 1.0),
        ("rl", 2.0),
        ("R", 1.0),
    }
    assert result["supplements"] == [{"methods": ["rl"], "command": "second", "other_machine": None}]
    # Seconds from different invocations are never compared: the redone RL against SFR-on's, yes; R against SFR-on, no.
    assert benchmark.timed_apart(result, "sfr_on", "rl") and not benchmark.timed_apart(result, "sfr_on", "R")
    assert result["peak_memory_bytes"]["rl"]["resident"] == 2.0 and result["minutes"] == 4.0
    assert list(benchmark.selected_runs(result)) == ["sfr_on", "rl", "R"]  # the table's order, whatever the run order
    with pytest.raises(ValueError, match="differ"):
        other = payload("third", ["rl"], 2.0)
        other["settings"]["digits"] = [0]
        benchmark.merge([payload("first", ["rl"], 1.0), other])


def test_finished_runs_survive_an_interruption(tmp_path):
    benchmark = load("benchmark")
    path = tmp_path / "results.partial.json"
    calls = []

    def run(value):
        def go():
            calls.append(value)
            if value == "boom":
                raise KeyboardInterrupt
            return {"value": value}

        return go

    finished = benchmark.FinishedRuns(path, {"iterations": 4}, resume=False)
    assert finished.get_or_run("a", run("a")) == {"value": "a"}
    with pytest.raises(KeyboardInterrupt):
        finished.get_or_run("b", run("boom"))
    resumed = benchmark.FinishedRuns(path, {"iterations": 4}, resume=True)
    assert resumed.get_or_run("a", run("again")) == {"value": "a"} and calls == ["a", "boom"]  # not run again
    assert resumed.get_or_run("b", run("b")) == {"value": "b"}
    assert benchmark.FinishedRuns(path, {"iterations": 8}, resume=True).runs == {}  # other settings: start over
    assert benchmark.FinishedRuns(path, {"iterations": 4}, resume=False).runs == {}


def test_quick_mode_never_writes_into_the_repository():
    args = load("benchmark").parse_args(["--quick"])
    assert ROOT not in args.output.parents and ROOT not in args.plots_dir.parents
    assert args.iterations == 4 and args.models == ["digits-ddpm"]


BAD_INPUT_CASES = """
import pytest


@pytest.mark.parametrize("stage", ["parse", "parse", "setup", "data", "mask"])
def test_a_bad_command_line_is_one_line(stage, record_property):
    record_property("stage", stage)
    assert stage != "data"  # one failed case


def test_under_accelerate_launch():
    pass


def test_a_bad_library_call():
    pass


@pytest.mark.skip
def test_load_pipeline_skipped():
    pass
"""


def test_reliability_report_reads_only_the_junit_xml(tmp_path):
    """Counts and stages come from pytest's JUnit XML (the stage a case records), not from importing the tests."""
    report = load("reliability_report")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_bad_inputs.py").write_text(BAD_INPUT_CASES)
    junit = tmp_path / "junit.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", "tests"]
    subprocess.run(command, cwd=tmp_path, capture_output=True, check=False)
    cases = report.read_junit(junit)
    assert len(cases) == 7 and sum(not case.ok for case in cases) == 1  # the skipped case is not counted
    assert report.cli_stages(cases) == {"parse": 2, "setup": 1, "data": 1, "mask": 1}
    text = report.render(cases)
    assert "| command line (`erase_concept.py`) | 6 | 5 | 1 |" in text and "| library calls | 1 | 1 | 0 |" in text
    assert "| **all** | **7** | **6** | **1** |" in text and "see failed cases" in text
    flat = " ".join(text.split())
    assert "2 at parsing, 0 by the option dataclasses' own checks before the model is loaded, 1 before any" in flat
    unstaged = [case._replace(properties={}) for case in cases]
    with pytest.raises(ValueError, match="record_property"):
        report.cli_stages(unstaged)


def test_mixed_precision_memory_script_runs_on_the_tiny_layout(tmp_path):
    """Each setting in its own process; the bf16 run trains in fp32 and holds every frozen tensor in bf16, so its
    training state is smaller; the section names the command and both settings."""
    output = tmp_path / "BENCHMARKS.md"
    argv = ["--size", "tiny", "--resolution", "16", "--output", str(output)]
    reports = load("memory_mixed_precision").main(argv)
    fp32, bf16 = reports["no"]["during_training"], reports["bf16"]["during_training"]
    assert fp32["frozen_copy"] == fp32["vae"] == "float32" and fp32["unet_trained"] == "float32"
    assert (
        bf16["frozen_copy"] == bf16["vae"] == bf16["text_encoder"] == "bfloat16" and bf16["unet_trained"] == "float32"
    )
    assert bf16["training_state_bytes"] < fp32["training_state_bytes"]
    assert all(all(report["restored"].values()) for report in (reports["no"], reports["bf16"]))
    text = output.read_text()
    assert "python benchmarks/memory_mixed_precision.py --size tiny" in text and "| bf16 | bfloat16, frozen" in text


def test_erasure_memory_script_runs_on_a_tiny_layout(tmp_path, capsys):
    """Every mode in its own process with a positive peak; the ratios are those of the peaks; --render_only renders
    the same section from the JSON alone."""
    results_json = tmp_path / "memory_erasure.json"
    argv = ["--size", "tiny", "--layouts", "sd-1.4", "--resolution", "16", "--no_write", "--results_json",
            str(results_json)]  # fmt: skip
    load("memory_erasure").main(argv)
    printed = capsys.readouterr().out
    results = json.loads(results_json.read_text())
    (group,) = results["groups"]
    runs = group["runs"]
    assert set(runs) == {"load", "ft", "sfr_on", "ft_lora", "sfr_on_lora", "sfr_on_lora_groups"}
    assert all(run["peak_rss_bytes"] > 0 for run in runs.values())
    peak = {mode: run["peak_rss_bytes"] for mode, run in runs.items()}
    for kind, sfr, ft in (("full", "sfr_on", "ft"), ("lora", "sfr_on_lora", "ft_lora"),
                          ("lora_groups", "sfr_on_lora_groups", "ft_lora")):  # fmt: skip
        assert group["ratios"][kind]["peak"] == pytest.approx(peak[sfr] / peak[ft])
        increment = group["ratios"][kind]["increment"]  # None where FT's peak is the load-only one
        if peak[ft] > peak["load"]:
            assert increment == pytest.approx((peak[sfr] - peak["load"]) / (peak[ft] - peak["load"]))
        else:
            assert increment is None
    # Full weights: SFR-on holds a mask and θ₀'s precomputed targets, no copy of the denoiser; LoRA neither.
    parameters = runs["load"]["parameters"]["unet"]
    assert runs["sfr_on"]["precomputed_target_bytes"] > 0 and runs["sfr_on"]["mask_bytes"] > 0
    assert all(runs[mode]["frozen_copy_bytes"] == 0 for mode in ("sfr_on", "sfr_on_lora", "ft"))
    assert runs["sfr_on_lora"]["precomputed_target_bytes"] == 0
    assert runs["sfr_on_lora_groups"]["method_config"]["mask_groups"] == 4
    assert runs["sfr_on"]["trained_parameters"] == parameters
    assert 0 < runs["sfr_on_lora"]["trained_parameters"] < runs["load"]["adapted_parameters"]
    assert "<!-- memory-erasure:start -->" in printed and "| sd-1.4 | tiny: 0.79M" in printed
    load("memory_erasure").main(["--render_only", "--no_write", "--results_json", str(results_json)])
    assert capsys.readouterr().out == printed


def _repeats_results(erased: list[float], retrain: list[float]) -> dict:
    """An attack_repeats results JSON for one model and digit 3: the given ASRs per seed, every attack alike."""
    attacks = {}
    for which, asrs in (("erased", erased), ("retrain", retrain)):
        for seed, asr in enumerate(asrs):
            attacks[f"m|{which}|3|{seed}"] = {kind: {"ASR": asr} for kind in ("inversion", "relearn", "relearn_reset")}
    settings = {"forget_samples": 100, "budget": {"attack_images": 16, "inversion_steps": 100,
                                                  "inversion_learning_rate": 0.05, "relearn_steps": 20}}  # fmt: skip
    seeds = list(range(len(erased)))
    return {"settings": settings, "attacks": attacks, "models": ["m"], "digits": [3], "seeds": seeds,
            "commands": ["c"], "date": "d", "commit": "x", "machine": "y"}  # fmt: skip


def test_attack_repeats_pairs_seeds_and_tells_a_gap_from_noise():
    repeats = load("attack_repeats")
    # Differences per seed +10, +10, +10, +10: a mean of 10, no spread: above retrain + 5 beyond the noise.
    steady = repeats.paired_difference(_repeats_results([0.5, 0.6, 0.3, 0.4], [0.4, 0.5, 0.2, 0.3]), "m", 3, "relearn")
    assert steady["difference"] == pytest.approx(10) and steady["se"] == pytest.approx(0, abs=1e-9)
    assert steady["erased"] == pytest.approx(45) and steady["retrain"] == pytest.approx(35)
    assert repeats.judgement(steady) == "above"
    # Differences +30, -10, +30, -10: mean 10, spread 23.1, SE 11.5: the excess is within the noise.
    noisy = repeats.paired_difference(
        _repeats_results([0.6, 0.2, 0.6, 0.2], [0.3, 0.3, 0.3, 0.3]), "m", 3, "inversion"
    )
    assert noisy["difference"] == pytest.approx(10) and noisy["se"] == pytest.approx(11.547, abs=1e-3)
    assert repeats.judgement(noisy) == "noise"
    assert repeats.judgement({"difference": 5.0, "se": 0.0}) == "within"
    section = repeats.render(_repeats_results([0.5, 0.6, 0.3, 0.4], [0.4, 0.5, 0.2, 0.3]))
    assert "### `m`, defaults" in section and "| 3 (three) | 4 | 45 / 35, +10.0 ± 0.0 *above* |" in section
    assert "`m`, defaults, relearn: within retrain + 5 on 0 of 1 digits, above it within the noise on 0" in section


def test_attack_repeats_keeps_settings_apart_and_pairs_only_shared_seeds():
    repeats = load("attack_repeats")
    results = _repeats_results([0.5, 0.6, 0.3, 0.4], [0.4, 0.5, 0.2, 0.3])
    # The same digit erased with an extra option, attacked with seeds 1 and 2 only: paired with retrain's 1 and 2.
    for seed, asr in ((1, 0.5), (2, 0.2)):
        results["attacks"][f"m|erased --adversarial_steps 3|3|{seed}"] = {
            kind: {"ASR": asr} for kind in ("inversion", "relearn", "relearn_reset")
        }
    results["erasures"] = {"m|erased|3": {"FA": 0.0, "RA": 0.99, "FID": 20.0}}
    assert repeats.erased_rows(results) == {("m", ""): [3], ("m", "--adversarial_steps 3"): [3]}
    cell = repeats.paired_difference(results, "m", 3, "inversion", "--adversarial_steps 3")
    assert cell["seeds"] == 2 and cell["retrain"] == pytest.approx(35) and cell["difference"] == pytest.approx(0)
    section = repeats.render(results)
    assert "### `m`, `--adversarial_steps 3`" in section
    assert "| 3 (three) | 2 | 35 / 35, +0.0 ± 0.0 *within*" in section
    # The erase command's final FA / RA, where the results hold them (the defaults' export here, not the other).
    assert section.count("Before the attacks") == 1 and "per digit: 3: 0 / 99." in section
    results["attacks"] = {k: v for k, v in results["attacks"].items() if not k.endswith(("|1", "|2", "|3"))}
    with pytest.raises(ValueError, match="fewer than two seeds"):
        repeats.paired_difference(results, "m", 3, "inversion")


def test_attack_repeats_quick_mode_never_writes_into_the_repository():
    repeats = load("attack_repeats")
    assert ROOT not in repeats.parse_args(["--quick"]).results_json.parents
    args = repeats.parse_args(["--adversarial_steps", "3"])
    assert args.results_json == ROOT / "docs" / "attack_repeats.json" and args.erase_args == [
        "--adversarial_steps",
        "3",
    ]


@pytest.mark.parametrize("argv", [["--seeds", "0"], ["--seeds", "1", "1"], ["--digits", "10"]])
def test_attack_repeats_bad_options_are_refused(argv):
    with pytest.raises(SystemExit):
        load("attack_repeats").parse_args(argv)


def test_attack_repeats_attacks_retrain_once_and_resumes_per_seed(tmp_path, monkeypatch):
    """Two settings of the erase command share retrain's attacks; a resumed run attacks only the missing seeds, and
    erases again only where a setting's export has seeds left."""
    repeats = load("attack_repeats")
    erased, attacked = [], []

    class Erased:
        config = {
            "metrics": {"after": {"FA": 0.0, "RA": 0.99, "FID": 20.0, "per_class_accuracy": {}}},
            "seconds": {"mask": 0.5, "train": 12.34},
        }

    def fake_erase(argv):
        erased.append(argv[argv.index("--output_dir") + 1 :])
        return Erased()

    def fake_attacks(pipeline, concept, kinds, *, arguments, evaluation):
        attacked.append((pipeline, concept, arguments.attack_seed))
        return {"attacks": {k: {"ASR": 0.5, "RA": 0.9, "steps_to_half": 0, "seconds": 1.0} for k in kinds}}

    class Pipeline(str):
        def set_progress_bar_config(self, **kwargs):
            pass

    monkeypatch.setattr(repeats.erase_command, "main", fake_erase)
    monkeypatch.setattr(repeats, "run_attacks", fake_attacks)
    monkeypatch.setattr(repeats, "load_pipeline", lambda path: Pipeline(Path(str(path)).name))
    monkeypatch.setattr(repeats, "family_for", lambda pipeline: type("F", (), {"name": "ddpm"}))
    retrained = []

    def fake_retrain(family, digit):
        retrained.append(digit)
        return f"{family}-without-{digit}"

    monkeypatch.setattr(repeats, "retrain", fake_retrain)
    results_json = str(tmp_path / "r.json")
    base = ["--models", "digits-ddpm", "--digits", "5", "--results_json", results_json, "--resume"]
    repeats.main([*base, "--seeds", "0", "1", "--output", str(tmp_path / "B.md")])
    assert [a[2] for a in attacked] == [0, 1, 0, 1] and {a[0] for a in attacked} == {"ddpm-without-5", "ddpm-erase-5"}
    assert len(erased) == 1 and erased[0][1:] == []
    attacked.clear()
    repeats.main([*base, "--seeds", "0", "1", "2", "--adversarial_steps", "3", "--output", str(tmp_path / "B.md")])
    # retrain: seed 2 only; the new setting: erased once, all three seeds.
    assert [(a[0], a[2]) for a in attacked] == [("ddpm-without-5", 2)] + [("ddpm-erase-5", s) for s in (0, 1, 2)]
    assert len(erased) == 2 and erased[1][1:] == ["--adversarial_steps", "3"]
    saved = json.loads(Path(results_json).read_text())
    assert saved["erasures"]["digits-ddpm|erased --adversarial_steps 3|5"] == {
        "FA": 0.0, "RA": 0.99, "FID": 20.0, "seconds": {"mask": 0.5, "train": 12.34}
    }  # fmt: skip
    assert len(saved["commands"]) == 2 and set(repeats.erased_rows(saved)) == {
        ("digits-ddpm", ""),
        ("digits-ddpm", "--adversarial_steps 3"),
    }
    section = (tmp_path / "B.md").read_text()
    assert "### `digits-ddpm`, `--adversarial_steps 3`" in section
    assert "training seconds (mask excluded), per digit: 5: 12.3." in section
    # A run whose seeds retrain's attacks all hold neither retrains nor loads retrain.
    retrained.clear()
    repeats.main([*base, "--seeds", "0", "1", "--no_mask", "--output", str(tmp_path / "B.md")])
    assert retrained == [] and {a[0] for a in attacked[4:]} == {"ddpm-erase-5"}


def test_unconditional_branch_samples_the_null_class_and_its_quick_run_stays_out_of_the_repo(tmp_path, monkeypatch):
    """The unconditional share is judged on samples of the null class only (the denoiser sees no other label), for
    the original and each SFR-on setting; --quick writes nowhere in the repository."""
    branch = load("unconditional_branch")
    assert ROOT not in branch.parse_args(["--quick"]).results_json.parents
    labels_seen, measure = [], branch.unconditional_shares

    def spy(pipeline, samples, judge):
        record = lambda module, args, kwargs: labels_seen.append(set(kwargs["class_labels"].tolist()))  # noqa: E731
        handle = pipeline.unet.register_forward_pre_hook(record, with_kwargs=True)
        try:
            return measure(pipeline, samples, judge)
        finally:
            handle.remove()

    monkeypatch.setattr(branch, "unconditional_shares", spy)
    argv = ["--models", "digits-ddpm", "--digits", "3", "--quick", "--results_json", str(tmp_path / "u.json")]
    results = branch.main(argv)
    rows = results["rows"]
    assert set(rows) == {"digits-ddpm|original", "digits-ddpm|defaults|3", "digits-ddpm|unconditional_forget|3"}
    assert labels_seen and all(labels == {10} for labels in labels_seen)  # 10: the digits DDPM's null class
    for shares in [rows["digits-ddpm|original"], rows["digits-ddpm|defaults|3"]["shares"]]:
        assert sum(shares.values()) <= 1 + 1e-6 and all((8 * share).is_integer() for share in shares.values())
    assert rows["digits-ddpm|unconditional_forget|3"]["after"]["FA"] is not None
    assert "| digits-ddpm | 3 (three) |" in branch.render(results)
    assert json.loads((tmp_path / "u.json").read_text())["rows"].keys() == rows.keys()
