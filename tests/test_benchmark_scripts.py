"""The benchmark scripts run (tiny settings) and compute what they report from what they measured."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

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
    argv = ["--family", "sd", "--tiny", "--iterations", "2", "--batch_size", "2", "--mixed_precision", "no"]
    report = load("benchmark_gpu").main([*argv, "--write", "--output", str(output)])
    sfr, ft = report["sfr_on"], report["ft"]
    assert report["family"] == "sd" and report["batch_size"] == 2
    assert sfr["seconds_per_iteration"] > 0 and ft["seconds_per_iteration"] > 0
    assert report["ratio_sfr_on_to_ft"] == pytest.approx(sfr["seconds_per_iteration"] / ft["seconds_per_iteration"])
    # SD's configuration of the method: the concept's captions are remapped onto the empty prompt.
    assert sfr["method_config"]["forget_loss"] == "remap" and sfr["method_config"]["remap_target"] == ""
    assert sfr["erased"]["forget_prompts"] == ["a photo of a cat"] and sfr["erased"]["anchor_concept"] == ""
    assert sfr["mask_seconds"] > 0 and sfr["parameters"] == ft["parameters"]
    text = output.read_text()
    assert "<!-- gpu-cost-sd:start -->" in text and "<!-- gpu-cost-sd:end -->" in text
    assert 'remap of the captions naming "cat" onto the empty prompt' in text and "| tiny sd | 1M |" in text


def test_gpu_cost_batch_size_defaults_per_family():
    script = load("benchmark_gpu")
    assert script.parse_args(["--tiny"]).batch_size == 32
    assert script.parse_args(["--family", "sd", "--tiny"]).batch_size == 8
    assert script.parse_args(["--family", "sd", "--tiny", "--batch_size", "3"]).batch_size == 3


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
    assert settings == {}  # DiT's own configuration: weighted ascent
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
    """The CI run of the comparison: the sweep, retrain, the gap, the memory probe and the report."""
    benchmark = load("benchmark")
    output = tmp_path / "BENCHMARKS.md"
    payload = benchmark.main(["--quick", "--output", str(output), "--plots_dir", str(tmp_path)])
    (result,) = payload["results"]
    assert result["family"] == "ddpm" and result["iterations"] == 4
    grid = result["learning_rate_grid"]
    assert grid == pytest.approx([2e-3, 6e-3])  # the DDPM default × the quick factors
    runs = result["runs"]
    # The sweep: every swept method at every rate on digit 3; the ablation R once, at SFR-on's chosen rate.
    sweep = {(r["method"], r["learning_rate"]) for r in runs if r.get("sweep")}
    assert sweep == {(m, lr) for m in ("sfr_on", "ft") for lr in grid}
    (ablation,) = [r for r in runs if r["method"] == "R"]
    assert ablation["learning_rate"] == result["best_learning_rate"]["sfr_on"]
    for r in runs:
        assert [h["step"] for h in r["history"]] == [0, 2, 4]
        assert r["seconds_per_iteration"] > 0
        reached = benchmark.iterations_to_forget(r["history"], r["history"][0]["RA"])
        assert r["iterations_to_forget"] == reached
        assert 0 <= r["gap"]["forget_tv"] <= 1 and 0 <= r["gap"]["remain_tv"] <= 1
        retrained = result["retrain"]["3"]
        assert r["gap"]["RA_difference"] == pytest.approx(r["final"]["RA"] - retrained["RA"])
    assert {r["mask_seconds"] > 0 for r in runs if r["method"] == "sfr_on"} == {True}
    assert {r["mask_seconds"] for r in runs if r["method"] in ("ft", "R")} == {0.0}  # no mask, no mask time
    for memory in result["peak_memory_bytes"].values():
        assert memory["resident"] > 100 * 2**20  # a fresh Python process with torch
    text = output.read_text()
    assert "<!-- methods-comparison:start -->" in text and "| **retrain** |" in text and "### Verdict" in text
    sfr = [r for r in runs if r["method"] == "sfr_on" and r["learning_rate"] == result["best_learning_rate"]["sfr_on"]]
    ft = [r for r in runs if r["method"] == "ft" and r["learning_rate"] == result["best_learning_rate"]["ft"]]
    cost = sfr[0]["seconds_per_iteration"] / ft[0]["seconds_per_iteration"]
    assert f"an SFR-on iteration takes {cost:.2f}× an FT iteration" in text
    assert (tmp_path / "methods_digits_ddpm.png").stat().st_size > 10_000
    results_json = tmp_path / "benchmark_methods.json"
    again = ["--render_only", str(results_json), "--output", str(output), "--plots_dir", str(tmp_path)]
    rendered = benchmark.main(again)
    assert rendered["results"] == json.loads(json.dumps(payload["results"]))


def test_per_digit_sfr_on_benchmark_quick_mode():
    argv = ["--digits", "3", "--quick", "--plot_eval_every", "1", "--max_train_steps", "2"]
    (row,) = load("benchmark_sfr_on").main(argv)
    assert row["name"] == "three" and row["steps"] == 2 and [h["step"] for h in row["history"]] == [0, 1, 2]
    assert row["iterations_to_forget"] == load("reporting").iterations_to_forget(row["history"], row["before"]["RA"])


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
    assert result["supplements"] == [{"methods": ["rl"], "command": "second"}]
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
