"""What a user can get wrong: every mistake is one clear line, found before the work it would spoil, and no file
that the run did not create is changed or removed.

Each command-line case runs the erase command's ``cli`` (``sfr_diffusion.commands.erase``, what
``scripts/erase_concept.py`` launches) in this process, from a working folder that holds a user's files (a folder
with a ``.git``, a file, an earlier export, a foreign checkpoints folder); the whole tree is checksummed before and
after. Spies on each step show *when* a case fails: "parse" cases must fail in argparse (before any option dataclass
is built), "config" cases in the dataclasses' or the command's own checks (before the model is loaded), "setup" cases
before any data is loaded, "data" cases before the saliency mask, "mask" cases (which only the mask can reveal)
before the first training step. The library's own checks are called directly. RELIABILITY.md reports the counts.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from PIL import Image

from sfr_diffusion import DataArguments, EvaluationArguments, load_pipeline
from sfr_diffusion.cli import dataclass_from_args
from sfr_diffusion.commands.erase import EraseCommand, cli, default_output_dir, parse_args
from sfr_diffusion.digits.models import digits_ddpm_pipeline
from sfr_diffusion.erasure import build_accelerator
from sfr_diffusion.export import UNLEARNING_CONFIG_FILE, export_pipeline
from sfr_diffusion.methods import ESDConfig, GAConfig, SalUnConfig, SFROnConfig, get_method_class
from sfr_diffusion.text_data import read_prompts
from sfr_diffusion.training import CHECKPOINTS_MARKER, TrainingArguments

ROOT = Path(__file__).resolve().parent.parent
ERASE = ROOT / "scripts" / "erase_concept.py"
SHORT = ["--max_train_steps", "1", "--forget_batch_size", "4", "--remain_batch_size", "4", "--skip_eval"]
SD = ["--pretrained_model_name_or_path", "digits-sd"]


def checksums(folder: Path) -> dict[str, str]:
    """Relative path → sha256 of every file, and "dir" for every folder, under `folder`."""
    tree = {}
    for path in sorted(folder.rglob("*")):
        relative = str(path.relative_to(folder))
        tree[relative] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return tree


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A user's working folder: their own files, an earlier export, broken inputs of every kind."""
    root = tmp_path_factory.mktemp("user")
    (root / "project" / ".git").mkdir(parents=True)
    (root / "project" / "notes.txt").write_text("my notes")
    (root / "project" / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "a-file").write_text("data")
    pipe = digits_ddpm_pipeline()
    export_pipeline(pipe, root / "outputs" / "old-export", unlearning_config={"run": 0}, model_card="# old\n")
    (root / "truncated").mkdir()
    (root / "truncated" / "model_index.json").write_text('{"_class_name": "ClassConditionalDDPMPipeline", "unet": [')
    (root / "custom").mkdir()
    (root / "custom" / "model_index.json").write_text(json.dumps({"_class_name": ["pipeline", "MyPipeline"]}))
    (root / "binary.txt").write_bytes(bytes(range(128, 256)) * 4)
    (root / "empty.txt").write_text("\n\n")
    junk = root / "junk-run" / "checkpoint-5"
    junk.mkdir(parents=True)
    (junk / "random.bin").write_bytes(b"\x00" * 16)
    (root / "junk-run" / CHECKPOINTS_MARKER).write_text("{}")
    (root / "earlier-run" / "checkpoint-1" / "denoiser").mkdir(parents=True)
    (root / "earlier-run" / CHECKPOINTS_MARKER).write_text("{}")
    digit = Image.new("L", (8, 8), 128)
    for folder in ("one-class/three", "pets/cat", "pets/dog", "damaged/three", "damaged/seven"):
        (root / folder).mkdir(parents=True)
        for i in range(3):
            digit.save(root / folder / f"{i}.png")
    (root / "damaged" / "seven" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return root


# (case id, command line, what the one line must say, the stage it must fail by)
CLI_CASES = [
    ("alpha-nan", ["--alpha", "nan"], "argument --alpha: expected a finite number, got 'nan'", "parse"),
    ("gamma-nan", ["--gamma", "nan"], "argument --gamma: expected a finite number", "parse"),
    ("lr-inf", ["--learning_rate", "inf"], "argument --learning_rate: expected a finite number", "parse"),
    ("lr-zero", ["--learning_rate", "0"], "learning_rate must be > 0, got 0.0", "config"),
    ("lr-negative", ["--learning_rate=-1e-3"], "learning_rate must be > 0, got -0.001", "config"),
    ("lr-text", ["--learning_rate", "fast"], "argument --learning_rate: expected a number, got 'fast'", "parse"),
    ("steps-fraction", ["--max_train_steps", "2.5"], "argument --max_train_steps: expected a whole number", "parse"),
    ("steps-zero", ["--max_train_steps", "0"], "max_train_steps must be >= 1, got 0", "config"),
    ("forget-batch-zero", ["--forget_batch_size", "0"], "forget_batch_size must be >= 1, got 0", "config"),
    ("remain-batch-negative", ["--remain_batch_size", "-3"], "remain_batch_size must be >= 1, got -3", "config"),
    ("unknown-method", ["--method", "nope"], "argument --method: invalid choice: 'nope'", "parse"),
    ("unknown-optimizer", ["--optimizer", "sgd"], "argument --optimizer: invalid choice", "parse"),
    ("unknown-precision", ["--mixed_precision", "fp8"], "argument --mixed_precision: invalid choice", "parse"),
    ("unknown-trainable", ["--trainable", "heads"], "argument --trainable: invalid choice", "parse"),
    ("seed-negative", ["--seed", "-1"], "seed must be >= 0, got -1", "config"),
    ("eval-every-zero", ["--eval_every", "0"], "eval_every must be >= 1 or None, got 0", "config"),
    ("mask-batches-zero", ["--mask_batches", "0"], "mask_batches must be >= 1, got 0", "config"),
    ("unknown-forget-loss", ["--forget_loss", "forget"], "argument --forget_loss: invalid choice", "parse"),
    ("checkpointing-text", ["--checkpointing_steps", "often"], "argument --checkpointing_steps", "parse"),
    ("temperature-negative", ["--temperature", "-0.5"], "temperature must be >= 0, got -0.5", "config"),
    ("dropout-nan", ["--label_dropout", "nan"], "argument --label_dropout", "parse"),
    ("unknown-option", ["--learning-rate", "1e-3"], "unrecognized arguments: --learning-rate", "parse"),
    (
        "option-of-another-method",
        ["--method", "ft", "--gamma", "2"],
        "--method ft does not take --gamma; its options are --label_dropout, --max_grad_norm",
        "parse",
    ),
    ("output-user-folder", ["--output_dir", "project"], "is not an sfr-diffusion export", "config"),
    ("output-current-folder", ["--output_dir", "."], "is the current folder", "config"),
    ("output-parent-folder", ["--output_dir", ".."], "is the current folder or one above it", "config"),
    ("output-is-a-file", ["--output_dir", "a-file"], "exists and is not a folder", "config"),
    ("output-under-a-file", ["--output_dir", "a-file/erased"], "a-file is a file, not a folder", "config"),
    ("output-earlier-export", ["--output_dir", "outputs/old-export"], "pass --overwrite_output_dir", "config"),
    ("overwrite-user-folder", ["--output_dir", "project", "--overwrite_output_dir"], "never replaced", "config"),
    ("empty-concept", ["--concept", "  "], "--concept is empty", "config"),
    ("unknown-class", ["--concept", "eleven"], "Unknown class 'eleven'; valid names are", "setup"),
    ("missing-model", ["--pretrained_model_name_or_path", "./no-such-model"], "has no model_index.json", "setup"),
    ("mistyped-alias", ["--pretrained_model_name_or_path", "digits-dpm"], "neither a pipeline folder", "setup"),
    (
        "truncated-index",
        ["--pretrained_model_name_or_path", "truncated"],
        "model_index.json is not valid JSON",
        "setup",
    ),
    ("custom-pipeline", ["--pretrained_model_name_or_path", "custom"], "custom pipeline (MyPipeline)", "setup"),
    ("dropout-above-one", ["--label_dropout", "1.5"], "label_dropout must be in [0, 1), got 1.5", "config"),
    ("salun-ratio", ["--method", "salun", "--mask_ratio", "2"], "mask_ratio must be in (0, 1], got 2.0", "config"),
    # --anchor_concept and --remap_class are aliases of --remap_target: on a class-conditional model the target is a
    # class, so a text anchor is an unknown class, found before the data is loaded.
    (
        "text-anchor-for-classes",
        ["--forget_loss", "remap", "--anchor_concept", "a dog"],
        "Unknown class 'a dog'; valid names are",
        "setup",
    ),
    ("unknown-remap-class", ["--forget_loss", "remap", "--remap_class", "ten"], "Unknown class 'ten'", "setup"),
    ("resume-missing", ["--resume_from_checkpoint", "nowhere/checkpoint-3"], "does not exist", "setup"),
    (
        "resume-junk-checkpoint",
        ["--checkpoints_dir", "junk-run", "--resume_from_checkpoint", "latest"],
        "is not an sfr-diffusion checkpoint: it lacks optimizer.bin",
        "setup",
    ),
    (
        "resume-junk-explicit",
        ["--resume_from_checkpoint", "junk-run/checkpoint-5"],
        "is not an sfr-diffusion checkpoint",
        "setup",
    ),
    (
        "checkpoints-in-user-folder",
        ["--checkpoints_dir", "project", "--checkpointing_steps", "1"],
        "holds files that sfr-diffusion did not write",
        "setup",
    ),
    (
        "checkpoints-of-earlier-run",
        ["--checkpoints_dir", "earlier-run", "--checkpointing_steps", "1"],
        "holds checkpoints of an earlier run: pass --resume_from_checkpoint latest",
        "setup",
    ),
    ("prompts-binary", [*SD, "--forget_prompts", "binary.txt"], "binary.txt is not UTF-8 text", "setup"),
    ("prompts-missing", ["--remain_prompts", "missing.txt"], "prompt file missing.txt does not exist", "config"),
    ("prompts-empty", [*SD, "--remain_prompts", "empty.txt"], "empty.txt holds no prompt", "setup"),
    ("prompts-for-classes", ["--forget_prompts", "a-file"], "are for text-to-image models", "setup"),
    ("data-one-class", ["--train_data_dir", "one-class"], "fewer than two class sub-folders", "data"),
    ("data-unknown-classes", ["--train_data_dir", "pets"], "classes ['cat', 'dog'] are not among", "data"),
    ("data-damaged-image", ["--train_data_dir", "damaged"], "broken.png (row", "data"),
    ("data-missing-folder", ["--train_data_dir", "no-such-folder"], "is not a folder", "data"),
    ("data-two-sources", ["--train_data_dir", "pets", "--dataset_name", "x"], "not both", "config"),
    (
        "mask-selects-nothing",
        ["--gamma", "1e30"],
        "saliency mask selects no weight (density 0 at gamma=1e+30)",
        "mask",
    ),
]

STAGES = ("parse", "config", "setup", "data", "mask")


def reached(what: str):
    def spy(*args, **kwargs):
        raise AssertionError(f"reached {what} before failing")

    return spy


def run_cli(argv, monkeypatch, capsys, stage: str):
    """`cli(argv)`; the spies make a case that gets further than its stage fail the test."""
    later = STAGES[STAGES.index(stage) :]
    if "parse" in later:
        monkeypatch.setattr("sfr_diffusion.commands.erase.dataclass_from_args", reached("the option dataclasses"))
    if "config" in later:
        monkeypatch.setattr("sfr_diffusion.commands.erase.load_pipeline", reached("loading the model"))
    if "setup" in later:
        data_work = {
            "sfr_diffusion.digits.preset.load_digits_dataset",  # the digits world's preset data
            "sfr_diffusion.sources.load_image_dataset",
            "sfr_diffusion.sources.verify_images",
            "sfr_diffusion.sources.generate_images",
        }
        for name in data_work:
            monkeypatch.setattr(name, reached(f"data work ({name})"))
    if "data" in later:
        monkeypatch.setattr("sfr_diffusion.training.compute_saliency_mask", reached("the saliency mask"))
    monkeypatch.setattr("sfr_diffusion.training._optimizer_step", reached("a training step"))
    capsys.readouterr()
    AcceleratorState._reset_state(True)
    try:
        code = cli([*SHORT, *argv])
    finally:
        AcceleratorState._reset_state(True)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", CLI_CASES, ids=[case[0] for case in CLI_CASES])
def test_a_bad_command_line_is_one_line_and_changes_nothing(case, workdir, monkeypatch, capsys, record_property):
    _, argv, expected, stage = case
    record_property("stage", stage)  # benchmarks/reliability_report.py counts the cases by stage
    monkeypatch.chdir(workdir)
    before = checksums(workdir)

    code, stderr = run_cli(argv, monkeypatch, capsys, stage)

    assert code == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("erase_concept.py: error: "), stderr
    assert expected in lines[-1], lines[-1]
    assert "Traceback" not in stderr
    assert checksums(workdir) == before  # nothing created, changed or removed


def test_help_shows_every_option_with_its_default(workdir, monkeypatch, capsys):
    """`--help` exits 0 and shows each option's default; `--method NAME --help` lists that method's options only."""
    monkeypatch.chdir(workdir)
    before = checksums(workdir)
    capsys.readouterr()

    assert cli(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps help to the terminal's width
    assert "--max_train_steps MAX_TRAIN_STEPS" in text and "(default: 50)" in text
    assert "--gamma GAMMA" in text and "--no_mask" in text  # the default method's options (sfr_on)

    assert cli(["--method", "ft", "--help"]) == 0
    ft_help = " ".join(capsys.readouterr().out.split())
    assert "--label_dropout LABEL_DROPOUT" in ft_help and "(default: 0.1)" in ft_help
    assert "--gamma" not in ft_help
    assert checksums(workdir) == before


def test_debug_shows_the_traceback_instead(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    with pytest.raises(FileExistsError, match="not an sfr-diffusion export"):
        cli(["--output_dir", "project", "--debug"])
    monkeypatch.setenv("SFR_DIFFUSION_DEBUG", "1")
    with pytest.raises(FileExistsError):
        cli(["--output_dir", "project"])


def test_fp16_without_a_gpu_says_it_trains_in_fp32(caplog):
    AcceleratorState._reset_state(True)
    try:
        with caplog.at_level("WARNING"):
            mixed_precision = build_accelerator(TrainingArguments(mixed_precision="fp16")).mixed_precision
    finally:
        AcceleratorState._reset_state(True)
    assert mixed_precision == ("fp16" if torch.cuda.is_available() else "no")
    if not torch.cuda.is_available():
        assert "trains in fp32" in caplog.text


def test_default_folders_name_the_model(monkeypatch):
    def default(*argv):
        return default_output_dir(dataclass_from_args(EraseCommand, parse_args(list(argv))))

    assert default() == Path("outputs/digits-ddpm-erase-three")
    assert default("--pretrained_model_name_or_path", "digits-sd") == Path("outputs/digits-sd-erase-three")
    sd = default("--pretrained_model_name_or_path", "CompVis/stable-diffusion-v1-4", "--concept", "Van Gogh")
    assert sd == Path("outputs/stable-diffusion-v1-4-erase-Van_Gogh")
    assert default("--concept", "../../x") == Path("outputs/digits-ddpm-erase-x")  # no way out of outputs/


LIBRARY_CASES = [
    ("sfr-on-alpha-nan", lambda: SFROnConfig(alpha=float("nan")), "alpha must be a finite number, got nan"),
    ("sfr-on-mask-batches-fraction", lambda: SFROnConfig(mask_batches=2.5), "mask_batches must be an integer"),
    ("sfr-on-use-mask-text", lambda: SFROnConfig(use_mask="yes"), "use_mask must be True or False"),
    ("training-steps-fraction", lambda: TrainingArguments(max_train_steps=2.5), "max_train_steps must be an integer"),
    ("training-lr-inf", lambda: TrainingArguments(learning_rate=float("inf")), "learning_rate must be a finite"),
    ("training-batch-zero", lambda: TrainingArguments(remain_batch_size=0), "remain_batch_size must be >= 1, got 0"),
    ("training-no-checkpoints-dir", lambda: TrainingArguments(checkpointing_steps=5), "needs a checkpoints_dir"),
    ("ga-alpha-negative", lambda: GAConfig(alpha=-1.0), "alpha must be > 0"),
    ("esd-guidance-nan", lambda: ESDConfig(negative_guidance=float("nan")), "negative_guidance must be a finite"),
    ("salun-ratio-zero", lambda: SalUnConfig(mask_ratio=0.0), "mask_ratio must be in (0, 1]"),
    ("unknown-method", lambda: get_method_class("nope"), "Unknown method 'nope'; available"),
    ("data-two-sources", lambda: DataArguments(dataset_name="x", train_data_dir="y"), "not both"),
    ("data-images-zero", lambda: DataArguments(images_per_prompt=0), "images_per_prompt must be >= 1, got 0"),
    ("eval-guidance-negative", lambda: EvaluationArguments(guidance_scale=-1.0), "guidance_scale must be >= 0"),
]


@pytest.mark.parametrize("case", LIBRARY_CASES, ids=[case[0] for case in LIBRARY_CASES])
def test_a_bad_library_call_raises_one_clear_line(case):
    _, call, expected = case
    with pytest.raises(ValueError) as raised:
        call()
    assert expected in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "folder, expected",
    [
        ("truncated", "truncated/model_index.json is not valid JSON"),
        ("custom", "sfr-diffusion does not run code from a model folder"),
        ("no-such-folder/sub", "has no model_index.json"),
    ],
)
def test_load_pipeline_names_the_damaged_folder(workdir, folder, expected):
    before = checksums(workdir)
    with pytest.raises(ValueError, match=expected.replace("(", r"\(")):
        load_pipeline(workdir / folder)
    assert checksums(workdir) == before


def test_read_prompts_refuses_a_binary_file(workdir):
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        read_prompts(workdir / "binary.txt")


def test_export_pipeline_refuses_a_user_folder(workdir):
    before = checksums(workdir)
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="never replaced"):
            export_pipeline(
                digits_ddpm_pipeline(), workdir / "project", unlearning_config={}, model_card="#", overwrite=overwrite
            )
    assert checksums(workdir) == before


def launch(*argv, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    env["HF_HOME"] = str(cwd / ".hf_home")  # no user-wide accelerate config
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "-q", str(ERASE)]
    return subprocess.run([*command, *map(str, argv)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_under_accelerate_launch_the_error_is_the_last_line(tmp_path):
    """The README's `accelerate launch -q`: the script's one line, no traceback from accelerate or the script."""
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "notes.txt").write_text("mine")

    result = launch(*SHORT, "--output_dir", "project", cwd=tmp_path)

    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("erase_concept.py: error: --output_dir"), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert (tmp_path / "project" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".hf_home") == ["project"]


def test_a_whole_export_of_ours_is_replaced_only_with_overwrite(tmp_path, monkeypatch, capsys):
    """The one case where an existing folder is replaced: an earlier export, with --overwrite_output_dir."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "erased"
    assert cli([*SHORT, "--output_dir", str(out)]) == 0
    first = json.loads((out / UNLEARNING_CONFIG_FILE).read_text())
    AcceleratorState._reset_state(True)
    assert cli([*SHORT, "--output_dir", str(out), "--seed", "1", "--overwrite_output_dir"]) == 0
    AcceleratorState._reset_state(True)
    second = json.loads((out / UNLEARNING_CONFIG_FILE).read_text())
    assert (first["training"]["seed"], second["training"]["seed"]) == (0, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["erased"]  # no checkpoints, no staging left
