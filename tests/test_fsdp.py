"""Erasure under FSDP (configs/accelerate_fsdp.yaml): the config names real Flux blocks, and two CPU processes with
the weights sharded end where one process ends, export a plain FluxPipeline, and resume from sharded checkpoints.

accelerate selects FSDP for GPU processes only, so the two processes run tests/erase_under_fsdp_on_cpu.py, which
switches the launch's accelerate state to FSDP with the config's settings (torch's FSDP2 itself runs on CPU over
gloo) and then runs the erase command. What a GPU adds (NCCL, bf16 kernels, the memory of FLUX.1 at real size) is
left to a GPU session: see the README, "More than one GPU: FSDP".
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import diffusers
import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType
from safetensors.torch import load_file

from sfr_diffusion.sharding import check_sharding
from sfr_diffusion.testing.layouts import flux_pipeline

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "accelerate_fsdp.yaml"
UNDER_FSDP = ROOT / "tests" / "erase_under_fsdp_on_cpu.py"
WEIGHTS = Path("transformer") / "diffusion_pytorch_model.safetensors"
# Two SFR-on iterations on the tiny Flux, with data it generates itself (one image per prompt).
ERASURE = ["--concept", "a cat", "--anchor_concept", "a dog", "--images_per_prompt", "1",
           "--generation_inference_steps", "2", "--max_train_steps", "2", "--forget_batch_size", "2",
           "--remain_batch_size", "2", "--mask_batches", "1"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_config_is_fsdp2_wrapping_flux_blocks():
    config = load_config_from_file(str(CONFIG))
    fsdp = config.fsdp_config
    assert config.distributed_type == DistributedType.FSDP and config.mixed_precision == "bf16"
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    wrapped = fsdp["fsdp_transformer_layer_cls_to_wrap"].split(",")
    blocks = {type(m).__name__ for m in flux_pipeline("tiny", seed=0).transformer.modules()}
    assert wrapped == ["FluxTransformerBlock", "FluxSingleTransformerBlock"] and set(wrapped) <= blocks
    assert all(issubclass(getattr(diffusers.models.transformers.transformer_flux, name), torch.nn.Module)
               for name in wrapped)  # fmt: skip


@pytest.mark.parametrize(
    "fsdp2, lora, tracked, groups, message",
    [
        (False, False, False, 1, "fsdp_version: 2"),
        (True, True, False, 1, "--multi_gpu"),
        (True, False, True, 1, "--eval_every"),
        (True, False, False, 2, "drop --mask_groups"),
    ],
)
def test_what_cannot_run_sharded_is_refused_before_any_work(fsdp2, lora, tracked, groups, message):
    """FSDP1's flat parameters, LoRA adapters, evaluations on the main process alone during training, and a Fisher
    measured group by group."""
    sharded = SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=fsdp2)
    with pytest.raises(ValueError, match=message):
        check_sharding(sharded, lora=lora, tracked=tracked, mask_groups=groups)
    check_sharding(SimpleNamespace(distributed_type=DistributedType.MULTI_GPU), lora=lora, tracked=tracked,
                   mask_groups=groups)  # fmt: skip
    if fsdp2:
        check_sharding(sharded, lora=False, tracked=False)  # FSDP2 itself is fine


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny Flux erased by one process, by two under FSDP (checkpointing every iteration), and by two resuming the
    second run's first checkpoint."""
    folder = tmp_path_factory.mktemp("fsdp")
    flux_pipeline("tiny", seed=0).save_pretrained(folder / "base")
    (folder / "remain.txt").write_text("a photo of a dog\na red car\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
           "HF_HOME": str(folder / "hf_home"), "SFR_DIFFUSION_CACHE": str(folder / "cache")}  # fmt: skip
    common = ["--pretrained_model_name_or_path", folder / "base", "--remain_prompts", folder / "remain.txt", *ERASURE]
    launch = [sys.executable, "-m", "accelerate.commands.launch"]

    def run(launcher: list, script: Path, *options, extra_env=None) -> None:
        command = [*launch, *map(str, launcher), "-q", str(script), *map(str, common), *map(str, options)]
        result = subprocess.run(command, cwd=folder, env={**env, **(extra_env or {})}, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]

    one = ["--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    run(one, ROOT / "scripts" / "erase_concept.py", "--output_dir", folder / "one")

    def two() -> list:  # the config file as shipped, fp32 so that the runs compare to rounding
        return ["--config_file", CONFIG, "--num_processes", "2", "--main_process_port", free_port(),
                "--mixed_precision", "no"]  # fmt: skip

    cpu = {"ACCELERATE_USE_CPU": "true"}
    run(two(), UNDER_FSDP, "--output_dir", folder / "fsdp", "--checkpointing_steps", "1", extra_env=cpu)
    checkpoints = folder / "fsdp-checkpoints"
    run(two(), UNDER_FSDP, "--output_dir", folder / "resumed", "--checkpoints_dir", checkpoints,
        "--resume_from_checkpoint", checkpoints / "checkpoint-1", extra_env=cpu)  # fmt: skip
    return folder


def test_two_sharded_processes_end_as_one(runs):
    """Same saliency mask, same weights to rounding: the per-parameter mask applied to each process's shard does what
    it does to whole tensors (had it not applied, the forget step would have moved non-salient weights by up to the
    learning rate)."""
    one, fsdp = runs / "one", runs / "fsdp"
    config = json.loads((fsdp / "unlearning_config.json").read_text())
    assert config["num_processes"] == 2 and config["steps"] == 2
    mask_one, mask_fsdp = load_file(one / "saliency_mask.safetensors"), load_file(fsdp / "saliency_mask.safetensors")
    assert mask_one.keys() == mask_fsdp.keys() and all(torch.equal(mask_one[k], mask_fsdp[k]) for k in mask_one)
    assert 0 < config["mask_statistics"]["density"] < 1
    base, weights_one, weights_fsdp = (load_file(f / WEIGHTS) for f in (runs / "base", one, fsdp))
    assert weights_one.keys() == weights_fsdp.keys()
    assert any(not torch.equal(base[k], weights_fsdp[k]) for k in base)
    for name, tensor in weights_one.items():
        torch.testing.assert_close(weights_fsdp[name], tensor, rtol=0, atol=1e-5, msg=name)


def test_sharded_checkpoints_resume_to_the_same_weights(runs):
    checkpoint = runs / "fsdp-checkpoints" / "checkpoint-2"
    assert (checkpoint / "optimizer_0").is_dir() and (checkpoint / "pytorch_model_fsdp_0").is_dir()  # sharded
    whole = load_file(checkpoint / "denoiser" / "diffusion_pytorch_model.safetensors")  # and the denoiser whole
    exported, resumed = load_file(runs / "fsdp" / WEIGHTS), load_file(runs / "resumed" / WEIGHTS)
    assert all(torch.equal(whole[k], exported[k]) and torch.equal(resumed[k], exported[k]) for k in exported)


def test_export_loads_with_plain_diffusers(runs):
    code = textwrap.dedent(
        f"""
        import sys, torch
        sys.modules["sfr_diffusion"] = None  # plain diffusers only
        torch.set_num_threads(1)
        from diffusers import FluxPipeline
        pipe = FluxPipeline.from_pretrained({str(runs / "fsdp")!r})
        assert type(pipe.transformer).__name__ == "FluxTransformer2DModel", type(pipe.transformer)
        pipe.set_progress_bar_config(disable=True)
        images = pipe("a cat", height=16, width=16, num_inference_steps=2, output_type="np").images
        assert images.shape == (1, 16, 16, 3), images.shape
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=runs)
