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
from sfr_diffusion.export import (
    UNLEARNING_CONFIG_FILE,
    check_output_dir,
    export_pipeline,
    recover_interrupted_export,
    render_model_card,
    versions,
)

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


def export(pipe, output_dir, model_card="# erased\n", overwrite=False, **config):
    return export_pipeline(
        pipe, output_dir, unlearning_config={**CONFIG, **config}, model_card=model_card, overwrite=overwrite
    )


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
    (out / UNLEARNING_CONFIG_FILE).write_text('{"run": 1}')
    before = tree(out)

    with pytest.raises(OSError, match="disk full"):
        export(pipeline, out, overwrite=True)

    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["erased"]


def test_failed_export_creates_no_output_dir(pipeline, tmp_path, failing_save):
    out = tmp_path / "erased"

    with pytest.raises(OSError, match="disk full"):
        export(pipeline, out)

    assert not out.exists()


def test_failed_export_leaves_no_staging_folder_behind(pipeline, tmp_path, failing_save):
    with pytest.raises(OSError, match="disk full"):
        export(pipeline, tmp_path / "erased")

    assert list(tmp_path.iterdir()) == []


def test_re_export_replaces_an_export_only_when_asked(pipeline, tmp_path):
    out = export(pipeline, tmp_path / "erased", run=1)
    (out / "stale.txt").write_text("from the first export")

    with pytest.raises(FileExistsError, match="--overwrite_output_dir"):
        export(pipeline, out, run=2)
    assert json.loads((out / UNLEARNING_CONFIG_FILE).read_text())["run"] == 1

    export(pipeline, out, run=2, overwrite=True)

    assert json.loads((out / UNLEARNING_CONFIG_FILE).read_text())["run"] == 2
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["erased"]  # no staging or previous folder left


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_that_is_not_an_export_is_never_replaced(pipeline, tmp_path, overwrite):
    user = tmp_path / "mine"
    (user / ".git").mkdir(parents=True)
    (user / "notes.txt").write_text("my work")
    (user / ".git" / "HEAD").write_text("ref: refs/heads/main")
    a_file = tmp_path / "a-file"
    a_file.write_text("data")
    before = tree(tmp_path)

    with pytest.raises(FileExistsError, match="not an sfr-diffusion export"):
        export(pipeline, user, overwrite=overwrite)
    with pytest.raises(FileExistsError, match="not a folder"):
        export(pipeline, a_file, overwrite=overwrite)

    assert tree(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "mine"]


def test_an_empty_folder_takes_the_export(pipeline, tmp_path):
    (tmp_path / "empty").mkdir()
    out = export(pipeline, tmp_path / "empty")
    assert (out / UNLEARNING_CONFIG_FILE).is_file()


def test_the_current_folder_is_refused(pipeline, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileExistsError, match="current folder"):
        export(pipeline, ".")
    assert list(tmp_path.iterdir()) == []


# Export `run` 2 over `out` in a fresh process killed (os._exit, as kill -9 would) right after its `kill_after`-th
# rename: 1 = the old export moved aside, before the new one takes the name.
KILLED_EXPORT = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from sfr_diffusion.export import export_pipeline
    from sfr_diffusion.digits.models import digits_ddpm_pipeline

    renames, rename = [0], Path.rename

    def rename_then_die(self, target):
        result = rename(self, target)
        renames[0] += 1
        if renames[0] == int(sys.argv[2]):
            os._exit(137)
        return result

    Path.rename = rename_then_die
    export_pipeline(digits_ddpm_pipeline(), sys.argv[1], unlearning_config={"run": 2}, model_card="#", overwrite=True)
    """
)


def kill_export(out: Path, kill_after: int) -> None:
    result = subprocess.run([sys.executable, "-c", KILLED_EXPORT, str(out), str(kill_after)], capture_output=True)
    assert result.returncode == 137, result.stderr.decode()[-2000:]


def test_a_kill_between_the_renames_is_finished_by_the_next_run(pipeline, tmp_path):
    out = export(pipeline, tmp_path / "erased", run=1)

    kill_export(out, kill_after=1)  # the old export is aside, the new one whole in its staging folder

    assert not out.exists()
    assert sorted(p.name.split("-")[0] for p in tmp_path.iterdir()) == [".erased.partial", ".erased.previous"]
    recover_interrupted_export(out)
    assert json.loads((out / UNLEARNING_CONFIG_FILE).read_text()) == {"run": 2, "versions": versions()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["erased"]


def test_a_kill_after_the_swap_leaves_the_new_export_and_the_next_run_cleans_up(pipeline, tmp_path):
    out = export(pipeline, tmp_path / "erased", run=1)

    kill_export(out, kill_after=2)  # the new export has the name, the old one is still aside

    assert json.loads((out / UNLEARNING_CONFIG_FILE).read_text())["run"] == 2
    with pytest.raises(FileExistsError, match="--overwrite_output_dir"):  # the next run recovers, then checks
        check_output_dir(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["erased"]


def test_an_unfinished_new_export_is_rolled_back(pipeline, tmp_path):
    """A kill while the new export was still being written, after a (hypothetical) early move of the old one:
    the staging folder is incomplete (no unlearning_config.json), so the old export comes back."""
    out = export(pipeline, tmp_path / "erased", run=1)
    dead = 2**22 + 12345  # above any pid_max: no such process
    out.rename(tmp_path / f".erased.previous-{dead}")
    (tmp_path / f".erased.partial-{dead}").mkdir()
    (tmp_path / f".erased.partial-{dead}" / "model_index.json").write_text("{}")

    recover_interrupted_export(out)

    assert json.loads((out / UNLEARNING_CONFIG_FILE).read_text())["run"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["erased"]


def test_staging_folders_of_a_running_export_or_beside_a_user_folder_are_left_alone(pipeline, tmp_path):
    live = tmp_path / f".erased.partial-{os.getpid()}"  # this process is alive: its export may be in progress
    live.mkdir()
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    orphan = tmp_path / f".mine.partial-{2**22 + 1}"
    orphan.mkdir()

    recover_interrupted_export(tmp_path / "erased")
    recover_interrupted_export(user)

    assert live.exists() and orphan.exists()


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
