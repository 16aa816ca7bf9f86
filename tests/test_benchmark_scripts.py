"""The benchmark scripts run (tiny settings) and compute what they report from what they measured."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_cost_script_runs_on_tiny_configs():
    report = load("benchmark_gpu").main(
        ["--tiny", "--iterations", "2", "--batch_size", "4", "--mixed_precision", "no"]
    )
    sfr, ft = report["sfr_on"], report["ft"]
    assert sfr["seconds_per_iteration"] > 0 and ft["seconds_per_iteration"] > 0
    assert report["ratio_sfr_on_to_ft"] == pytest.approx(sfr["seconds_per_iteration"] / ft["seconds_per_iteration"])
    assert sfr["mask_seconds"] > 0 and sfr["parameters"] == ft["parameters"]


def test_gpu_cost_script_runs_stable_diffusion_on_tiny_configs(tmp_path):
    script = load("benchmark_gpu")
    script.ROOT = tmp_path  # --write goes to ROOT/BENCHMARKS.md
    report = script.main(
        ["--family", "sd", "--tiny", "--iterations", "2", "--batch_size", "2", "--mixed_precision", "no", "--write"]
    )
    sfr, ft = report["sfr_on"], report["ft"]
    assert report["family"] == "sd" and report["batch_size"] == 2
    assert sfr["seconds_per_iteration"] > 0 and ft["seconds_per_iteration"] > 0
    assert report["ratio_sfr_on_to_ft"] == pytest.approx(sfr["seconds_per_iteration"] / ft["seconds_per_iteration"])
    # SD's configuration of the method: the concept's captions are remapped onto the empty prompt (condition 0).
    assert sfr["method_config"]["forget_loss"] == "remap" and sfr["method_config"]["remap_class"] == 0
    assert sfr["mask_seconds"] > 0 and sfr["parameters"] == ft["parameters"]
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "<!-- gpu-cost-sd:start -->" in text and "<!-- gpu-cost-sd:end -->" in text
    assert 'remap of the captions naming "cat" onto the empty prompt' in text and "| tiny sd | 1M |" in text


def test_gpu_cost_batch_size_defaults_per_family():
    script = load("benchmark_gpu")
    assert script.parse_args(["--tiny"]).batch_size == 32
    assert script.parse_args(["--family", "sd", "--tiny"]).batch_size == 8
    assert script.parse_args(["--family", "sd", "--tiny", "--batch_size", "3"]).batch_size == 3


def test_gpu_cost_sd_data_splits_by_caption():
    script = load("benchmark_gpu")
    from sfr_diffusion.families import family_for
    from sfr_diffusion.layouts import stable_diffusion_pipeline

    family = family_for(stable_diffusion_pipeline("tiny"))
    forget, remain, settings = script.erasure_data(family, 6)
    assert len(forget) == len(remain) == 3 and settings == {"forget_loss": "remap", "remap_class": 0}
    images, labels = forget.load([0, 1, 2])
    assert images.shape == (3, 3, 16, 16) and set(labels.tolist()) == {family.prompt_id("a photo of a cat")}
    assert set(remain.load([0, 1, 2])[1].tolist()) == {family.prompt_id("a photo of a dog")}


def test_iterations_to_forget_needs_both_fa_and_ra():
    from sfr_diffusion import reporting as benchmark
    history = [
        {"step": 0, "FA": 1.0, "RA": 0.99},
        {"step": 10, "FA": 0.0, "RA": 0.95},  # forgotten, but the rest is damaged
        {"step": 20, "FA": 0.02, "RA": 0.99},  # the rest is fine, not yet forgotten
        {"step": 30, "FA": 0.01, "RA": 0.98},
    ]
    assert benchmark.iterations_to_forget(history, base_ra=0.99) == 30
    assert benchmark.iterations_to_forget(history[:3], base_ra=0.99) is None


def test_sections_are_replaced_in_place(tmp_path):
    from sfr_diffusion import reporting as benchmark
    path = tmp_path / "BENCHMARKS.md"
    benchmark.write_section(path, "<!-- a:start -->\nold a\n<!-- a:end -->\n")
    benchmark.write_section(path, "<!-- b:start -->\nb\n<!-- b:end -->\n")
    benchmark.write_section(path, "<!-- a:start -->\nnew a\n<!-- a:end -->\n")
    text = path.read_text()
    assert "new a" in text and "old a" not in text and text.index("new a") < text.index("\nb\n")
