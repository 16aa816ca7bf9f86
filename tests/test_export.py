"""export_pipeline: a plain diffusers folder, written whole or not at all, loadable without sfr-diffusion."""

import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import sfr_diffusion
from sfr_diffusion import ClassConditionalDDPMPipeline
from sfr_diffusion.export import UNLEARNING_CONFIG_FILE, export_pipeline, render_model_card

STEPS, SEED, LABELS, GUIDANCE = 2, 0, [1, 3, 7], 2.0
CONFIG = {"method": "sfr_on", "erased": ["three"], "config": {"alpha": 10.0}}


def generate(pipe, output_type="pt"):
    return pipe(
        LABELS,
        guidance_scale=GUIDANCE,
        num_inference_steps=STEPS,
        generator=torch.manual_seed(SEED),
        output_type=output_type,
    ).images


def export(pipe, output_dir, model_card="# erased\n", **config):
    return export_pipeline(pipe, output_dir, unlearning_config={**CONFIG, **config}, model_card=model_card)


def tree(folder):
    """Relative path → bytes of every file under `folder`."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_export_reloads_with_from_pretrained_and_reproduces_images(pipeline, tmp_path):
    # Move the weights off their seeded init so that the test sees exported weights, not a re-seeded model.
    with torch.no_grad():
        for p in pipeline.unet.parameters():
            p.add_(0.01 * torch.randn_like(p))
    expected = generate(pipeline)

    written = export(pipeline, tmp_path / "erased")

    assert written == (tmp_path / "erased").resolve()
    reloaded = ClassConditionalDDPMPipeline.from_pretrained(written)
    reloaded.set_progress_bar_config(disable=True)
    assert torch.equal(generate(reloaded), expected)
    assert reloaded.config.id2label == pipeline.config.id2label


def test_export_writes_config_with_versions_card_and_pipeline_code(pipeline, tmp_path):
    out = export(pipeline, tmp_path / "erased", model_card="# card\n")

    config = json.loads((out / UNLEARNING_CONFIG_FILE).read_text())
    assert {k: config[k] for k in CONFIG} == CONFIG
    assert config["versions"]["sfr_diffusion"] == sfr_diffusion.__version__
    assert set(config["versions"]) >= {"sfr_diffusion", "diffusers", "torch", "python"}
    assert (out / "README.md").read_text() == "# card\n"
    source = inspect.getsourcefile(ClassConditionalDDPMPipeline)
    assert (out / "pipeline.py").read_bytes() == Path(source).read_bytes()
    assert (out / "model_index.json").exists() and (out / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert not list(out.rglob("*.bin"))


@pytest.fixture
def failing_save(monkeypatch):
    """Make save_pretrained write part of the pipeline and then fail, as a full disk or a kill would."""
    original = ClassConditionalDDPMPipeline.save_pretrained

    def save_then_fail(self, save_directory, *args, **kwargs):
        original(self, save_directory, *args, **kwargs)
        (save_directory / "model_index.json").unlink()
        raise OSError("disk full")

    monkeypatch.setattr(ClassConditionalDDPMPipeline, "save_pretrained", save_then_fail)


def test_failed_export_leaves_the_previous_export_untouched(pipeline, tmp_path, failing_save):
    out = tmp_path / "erased"
    out.mkdir()
    (out / "model_index.json").write_text('{"previous": true}')
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "saliency_mask.safetensors").write_bytes(b"mask")
    before = tree(out)

    with pytest.raises(OSError, match="disk full"):
        export(pipeline, out)

    assert tree(out) == before


def test_failed_export_creates_no_output_dir(pipeline, tmp_path, failing_save):
    out = tmp_path / "erased"

    with pytest.raises(OSError, match="disk full"):
        export(pipeline, out)

    assert not out.exists()


def test_failed_export_leaves_no_staging_folder_behind(pipeline, tmp_path, failing_save):
    with pytest.raises(OSError, match="disk full"):
        export(pipeline, tmp_path / "erased")

    assert list(tmp_path.iterdir()) == []


def test_re_export_replaces_the_pipeline_but_keeps_checkpoints(pipeline, tmp_path):
    out = export(pipeline, tmp_path / "erased", run=1)
    (out / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoints" / "saliency_mask.safetensors").write_bytes(b"mask")
    (out / "checkpoints" / "checkpoint-2" / "history.json").write_text("[]")
    (out / "stale.txt").write_text("from the first export")

    export(pipeline, out, run=2)

    assert json.loads((out / UNLEARNING_CONFIG_FILE).read_text())["run"] == 2
    assert (out / "checkpoints" / "saliency_mask.safetensors").read_bytes() == b"mask"
    assert (out / "checkpoints" / "checkpoint-2" / "history.json").read_text() == "[]"
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["erased"]  # no staging or previous folder left


BLOCK_SFR_DIFFUSION = textwrap.dedent(
    """
    import sys

    class BlockSfrDiffusion:
        def find_spec(self, name, path=None, target=None):
            if name == "sfr_diffusion" or name.startswith("sfr_diffusion."):
                raise ImportError("sfr_diffusion must not be needed to load an export")

    sys.meta_path.insert(0, BlockSfrDiffusion())
    """
)

LOAD_WITHOUT_SFR_DIFFUSION = BLOCK_SFR_DIFFUSION + textwrap.dedent(
    """

    import numpy as np
    import torch
    from diffusers import DiffusionPipeline

    folder, output, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(threads)
    # diffusers >= 0.3x refuses to run a folder's pipeline.py unless told to trust it.
    pipe = DiffusionPipeline.from_pretrained(folder, custom_pipeline=folder, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        {labels!r}, guidance_scale={guidance!r}, num_inference_steps={steps!r},
        generator=torch.manual_seed({seed!r}), output_type="np",
    ).images
    np.save(output, images)
    assert not any(name.startswith("sfr_diffusion") for name in sys.modules)
    print(type(pipe).__name__, sorted(pipe.config.id2label.items())[3])
    """
).format(labels=LABELS, guidance=GUIDANCE, steps=STEPS, seed=SEED)


def run_python(code, *args, cwd):
    """Run `code` in a fresh interpreter, offline, with diffusers' dynamic-module cache kept inside `cwd`."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(cwd / "modules")}
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_export_loads_with_plain_diffusers_in_a_fresh_process(pipeline, tmp_path):
    expected = generate(pipeline, output_type="np")
    out = export(pipeline, tmp_path / "erased")
    images_path = tmp_path / "images.npy"

    result = run_python(LOAD_WITHOUT_SFR_DIFFUSION, out, images_path, torch.get_num_threads(), cwd=tmp_path)

    assert result.returncode == 0, result.stderr[-3000:]
    assert "ClassConditionalDDPMPipeline (3, 'three')" in result.stdout
    np.testing.assert_array_equal(np.load(images_path), expected)


def test_model_card_loader_snippet_runs(pipeline, tmp_path):
    card = render_model_card(
        base_model="digits-ddpm",
        erased="three",
        method_name="sfr_on",
        paper="paper",
        steps=STEPS,
        seconds=1.0,
        metrics_before=None,
        metrics_after=None,
        mask_statistics=None,
        pipeline_class=type(pipeline).__name__,
    )
    out = export(pipeline, tmp_path / "erased", model_card=card)
    snippet = card.split("```python\n")[1].split("```")[0].replace("path/to/this/folder", str(out))
    namespace = {}

    exec(snippet, namespace)  # the card's own code, as a user would paste it

    assert type(namespace["pipe"]).__name__ == "ClassConditionalDDPMPipeline"
