"""scripts/erase_concept.py (the launcher of `sfr_diffusion.commands.erase`) end to end through `accelerate launch`:
files written, resume, checkpoint rotation, processes, errors.

Every run is a real `accelerate launch` of the script in a fresh interpreter, offline, on the CPU with one thread per
process (the models are tiny; one thread avoids OpenMP spin-waiting when the suite shares its cores).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import sfr_diffusion
from sfr_diffusion.commands.evaluate import cli as evaluate_cli
from sfr_diffusion.digits import DIGIT_NAMES

ROOT = Path(__file__).resolve().parent.parent
ERASE = ROOT / "scripts" / "erase_concept.py"
BASE_UNET = ROOT / "sfr_diffusion" / "digits" / "assets" / "ddpm" / "unet" / "diffusion_pytorch_model.safetensors"
UNET_WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"

# A short run that skips the (judge) evaluation: enough to exercise checkpoints, resume and sharding.
SHORT = ["--max_train_steps", "6", "--forget_batch_size", "8", "--remain_batch_size", "8", "--skip_eval"]

# Makes rank 1 slow to write its share of every `save_state` (its random_states_1.pkl), as a busy core or a slow disk
# would, so that a checkpoint that is renamed into place before every rank has written is caught every time.
SLOW_RANK_1 = textwrap.dedent(
    """
    import os, runpy, sys, time

    import accelerate.accelerator

    save_accelerator_state = accelerate.accelerator.save_accelerator_state  # fails loudly if accelerate renames it


    def slow_on_rank_1(*args, **kwargs):
        if int(os.environ["RANK"]) == 1:
            time.sleep(1.0)
        return save_accelerator_state(*args, **kwargs)


    accelerate.accelerator.save_accelerator_state = slow_on_rank_1
    sys.argv[0] = {script!r}
    runpy.run_path({script!r}, run_name="__main__")
    """
)


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    """An empty HF_HOME, so that no user-wide `accelerate config` file changes how the runs are launched."""
    return tmp_path_factory.mktemp("hf_home")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(*script_args, cwd, hf_home, num_processes=1, script=ERASE) -> subprocess.CompletedProcess:
    """`accelerate launch` `script` on the CPU with `num_processes` processes and return the finished process."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "HF_HOME": str(hf_home),
    }
    if num_processes == 1:
        launcher = ["--cpu", "--num_processes", "1"]
    else:
        # `--cpu --num_processes N` runs ONE process: accelerate's CPU launcher only spreads over processes through
        # mpirun. torchrun (`--multi_gpu`) starts N processes, and ACCELERATE_USE_CPU makes each Accelerator join
        # them as MULTI_CPU over gloo; without it every process would believe it is the only (main) one.
        launcher = ["--multi_gpu", "--num_processes", str(num_processes), "--main_process_port", str(free_port())]
        env["ACCELERATE_USE_CPU"] = "true"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *launcher,
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--quiet",
        str(script),
        *map(str, script_args),
    ]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def check_ok(result: subprocess.CompletedProcess) -> None:
    # torchrun ends stderr with its own summary: list the workers' error lines too.
    errors = "\n".join(line for line in result.stderr.splitlines() if "Error:" in line)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-3000:]}\nerrors:\n{errors}"


def unet_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(output_dir / UNET_WEIGHTS)


def leftovers(folder: Path) -> list[Path]:
    """Interrupted saves: checkpoint `.partial` folders and export staging/previous folders."""
    return [p for p in folder.rglob("*") if ".partial" in p.name or ".previous" in p.name]


def checkpoints_of(output_dir: Path) -> Path:
    return output_dir.with_name(f"{output_dir.name}-checkpoints")


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, hf_home):
    """One process, 6 steps, a checkpoint every 3 steps and no rotation: checkpoint-3 and checkpoint-6 are kept."""
    cwd = tmp_path_factory.mktemp("short_run")
    output_dir = cwd / "a"
    check_ok(launch(*SHORT, "--checkpointing_steps", 3, "--output_dir", output_dir, cwd=cwd, hf_home=hf_home))
    return output_dir


def test_default_run_erases_three(tmp_path, hf_home, capsys):
    """The command in the script's docstring, with every default: erase "three" from the bundled digits DDPM."""
    output_dir = tmp_path / "erase-three"

    result = launch("--output_dir", output_dir, cwd=tmp_path, hf_home=hf_home)

    check_ok(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["erase-three"]  # nothing else written, no staging left
    for name in ("model_index.json", "unet", "scheduler", "pipeline.py", "README.md"):
        assert (output_dir / name).exists(), name
    assert not leftovers(output_dir)
    card = (output_dir / "README.md").read_text()
    assert "three" in card and "sfr_on" in card

    config = json.loads((output_dir / "unlearning_config.json").read_text())
    assert config["erased"] == {"concept": "three", "class_id": 3, "anchor_concept": "four"}
    assert config["method"] == "sfr_on" and config["num_processes"] == 1 and config["steps"] == 50
    before, after = config["metrics"]["before"], config["metrics"]["after"]
    assert before["FA"] >= 0.9, before  # the judge sees threes before erasure, so FA after measures the erasure
    assert after["FA"] <= 0.05 and after["RA"] >= 0.90, after
    assert 0 < config["mask_statistics"]["density"] < 1
    assert config["versions"]["sfr_diffusion"] == sfr_diffusion.__version__
    assert set(config["versions"]) >= {"sfr_diffusion", "diffusers", "torch", "python"}

    mask = load_file(output_dir / "saliency_mask.safetensors")
    assert mask and all(m.dtype == torch.bool for m in mask.values())
    assert set(mask) == set(unet_weights(output_dir))
    printed = json.loads(result.stdout)  # the short summary the command prints, rounded
    assert printed["output_dir"] == str(output_dir) and printed["erased"] == "three" and printed["steps"] == 50
    assert printed["after"]["FA"] == pytest.approx(after["FA"], abs=1e-3)

    # The standalone evaluation of the export (scripts/evaluate.py's command), with the same seed and settings,
    # measures exactly what the run did.
    capsys.readouterr()
    assert evaluate_cli([str(output_dir)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["forget"] == [3]  # the class read from the export's unlearning_config.json, as judged
    assert evaluated["FA"] == after["FA"] and evaluated["RA"] == after["RA"]
    assert evaluated["FID"] == pytest.approx(after["FID"], rel=1e-6)


def test_resume_matches_uninterrupted(short_run, tmp_path, hf_home):
    """Resuming at step 3 of 6 gives the very weights of the uninterrupted run; the resumed run rotates checkpoints."""
    checkpoints = checkpoints_of(short_run)  # beside the export, never inside it
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "checkpoint-3",
        "checkpoint-6",
        "saliency_mask.safetensors",
        "sfr_diffusion_checkpoints.json",
    ]
    assert not (short_run / "checkpoints").exists()
    # The interrupted run: only what the uninterrupted one had on disk after step 3.
    resumed = tmp_path / "b"
    checkpoints_of(resumed).mkdir(parents=True)
    shutil.copytree(checkpoints / "checkpoint-3", checkpoints_of(resumed) / "checkpoint-3")
    for name in ("saliency_mask.safetensors", "sfr_diffusion_checkpoints.json"):
        shutil.copy(checkpoints / name, checkpoints_of(resumed))

    result = launch(
        *SHORT,
        "--checkpointing_steps",
        3,
        "--checkpoints_total_limit",
        1,
        "--resume_from_checkpoint",
        "latest",
        "--output_dir",
        resumed,
        cwd=tmp_path,
        hf_home=hf_home,
    )

    check_ok(result)
    assert "Resumed from" in result.stderr and "at step 3" in result.stderr
    expected, actual = unet_weights(short_run), unet_weights(resumed)
    assert expected.keys() == actual.keys()
    # Bitwise: batches are a function of the step, the Adam state is restored and the ops are the same.
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name
    # The final checkpoint holds the exported weights, in diffusers format.
    checkpoint = load_file(checkpoints / "checkpoint-6" / "denoiser" / UNET_WEIGHTS.name)
    assert all(torch.equal(checkpoint[name], expected[name]) for name in expected)
    # --checkpoints_total_limit 1: checkpoint-3 (from before the resume) made room for checkpoint-6.
    assert sorted(p.name for p in checkpoints_of(resumed).iterdir()) == [
        "checkpoint-6",
        "saliency_mask.safetensors",
        "sfr_diffusion_checkpoints.json",
    ]
    assert not leftovers(resumed) and not leftovers(short_run)
    assert load_file(resumed / "saliency_mask.safetensors").keys() == expected.keys()


def test_two_processes_match_one(short_run, tmp_path, hf_home):
    """The same run sharded over two processes ends at the same weights: each process gets half of every batch."""
    two = tmp_path / "two"

    check_ok(launch(*SHORT, "--output_dir", two, cwd=tmp_path, hf_home=hf_home, num_processes=2))

    assert json.loads((short_run / "unlearning_config.json").read_text())["num_processes"] == 1
    assert json.loads((two / "unlearning_config.json").read_text())["num_processes"] == 2
    one_mask, two_mask = (load_file(d / "saliency_mask.safetensors") for d in (short_run, two))
    assert all(torch.equal(one_mask[name], two_mask[name]) for name in one_mask)

    base, one, two = load_file(BASE_UNET), unet_weights(short_run), unet_weights(two)
    assert one.keys() == two.keys()
    difference = torch.cat([(one[k] - two[k]).flatten() for k in one]).norm()
    moved = torch.cat([(one[k] - base[k]).flatten() for k in one]).norm()
    # Not allclose(atol=1e-5): the all-reduce sums in another order, and Adam turns that rounding noise into full
    # steps on weights whose exact gradient is zero (attention key biases: softmax ignores a shift shared by all
    # keys), up to ~1e-4 apart after 6 steps. Relative to how far the run moved the weights the two agree to
    # ~1e-4; a sharding error (duplicated or dropped samples, a wrong global weighting) gives a difference of the
    # order of the move itself (another seed: ~1.4).
    assert difference < 1e-3 * moved, (difference, moved)


def test_checkpoint_waits_for_every_process(tmp_path, hf_home):
    """A checkpoint is only moved into place once every process has written its part (here rank 1 is slow)."""
    wrapper = tmp_path / "slow_rank_1.py"
    wrapper.write_text(SLOW_RANK_1.format(script=str(ERASE)))
    output_dir = tmp_path / "out"
    args = ["--max_train_steps", 2, "--forget_batch_size", 8, "--remain_batch_size", 8, "--skip_eval"]

    result = launch(
        *args,
        "--checkpointing_steps",
        1,
        "--output_dir",
        output_dir,
        cwd=tmp_path,
        hf_home=hf_home,
        num_processes=2,
        script=wrapper,
    )

    check_ok(result)
    for step in (1, 2):
        checkpoint = checkpoints_of(output_dir) / f"checkpoint-{step}"
        assert (checkpoint / "random_states_0.pkl").exists() and (checkpoint / "random_states_1.pkl").exists()
    assert not leftovers(output_dir)


def test_bad_inputs_fail_clearly(tmp_path, hf_home):
    """An unknown class names the valid ones; a folder that is no pipeline says what is missing. Nothing is written."""
    not_a_pipeline = tmp_path / "not-a-pipeline"
    not_a_pipeline.mkdir()
    runs = {
        "unknown concept": ["--concept", "eleven", "--output_dir", tmp_path / "eleven"],
        "no model_index.json": ["--pretrained_model_name_or_path", not_a_pipeline, "--output_dir", tmp_path / "nope"],
    }
    with ThreadPoolExecutor(len(runs)) as pool:  # ~10 s of imports each: overlap them
        futures = {name: pool.submit(launch, *args, cwd=tmp_path, hf_home=hf_home) for name, args in runs.items()}
        results = {name: future.result() for name, future in futures.items()}

    unknown = results["unknown concept"]
    assert unknown.returncode != 0
    message = next(line for line in unknown.stderr.splitlines() if "eleven" in line and "error:" in line)
    assert "Unknown class 'eleven'" in message and all(repr(name) in message for name in DIGIT_NAMES), message

    missing = results["no model_index.json"]
    assert missing.returncode != 0
    assert "model_index.json" in missing.stderr and str(not_a_pipeline) in missing.stderr, missing.stderr[-2000:]

    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-pipeline"]
