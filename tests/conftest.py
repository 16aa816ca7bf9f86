"""Shared fixtures: tiny untrained digits-world models and the digits data, all offline."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Loading an export with `custom_pipeline` copies its pipeline.py into diffusers' module cache: keep that out of ~/.
os.environ.setdefault("HF_MODULES_CACHE", os.path.join(tempfile.gettempdir(), "sfr_diffusion_tests_hf_modules"))
# Generated images and the assembled digits SD go to a test cache, not the user's.
os.environ.setdefault("SFR_DIFFUSION_CACHE", os.path.join(tempfile.gettempdir(), "sfr_diffusion_tests_cache"))

import pytest  # noqa: E402
import torch  # noqa: E402

# The models here are tiny: one thread is as fast as two and avoids OpenMP spin-waiting (seconds per step) when the
# suite shares its cores with another job. Subprocess tests pass the same count on, so CPU kernels reduce alike.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits_train():
    from sfr_diffusion.digits.data import load_digits_dataset

    return load_digits_dataset("train")


@pytest.fixture(scope="session")
def forget_remain(digits_train):
    """(forget, remain) views of the training digits: class 3 is erased."""
    from sfr_diffusion.data import split_by_class

    return split_by_class(digits_train, [3], resolution=8, channels=1)


@pytest.fixture
def pipeline():
    """A fresh untrained class-conditional DDPM pipeline for 8×8 digits (class 10 is the null class)."""
    from sfr_diffusion.digits.models import digits_ddpm_pipeline

    pipe = digits_ddpm_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def fresh_accelerate_state():
    """Reset accelerate's process-wide state around a test whose code builds its own Accelerator (erase() does), so
    that its settings (e.g. mixed precision) neither meet another test's nor leak into the next one."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


@pytest.fixture
def accelerator(fresh_accelerate_state):
    """A fresh CPU Accelerator; accelerate keeps its state in process-wide singletons, so reset around each test."""
    from accelerate import Accelerator

    return Accelerator(cpu=True)
