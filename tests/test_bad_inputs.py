"""What a user can get wrong: every mistake is one clear line, found before the work it would spoil, and no file
that the run did not create is changed or removed.

Each command-line case runs ``scripts/erase_concept.py``'s ``cli`` in this process, from a working folder that holds
a user's files (a folder with a ``.git``, a file, an earlier export, a foreign checkpoints folder); the whole tree is
checksummed before and after. Spies on the data and mask steps show *when* a case fails: "setup" cases must fail
before any data is loaded, "data" cases before the saliency mask, "mask" cases (which only the mask can reveal)
before the first training step. The library's own checks are called directly. RELIABILITY.md reports the counts.
"""

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState
from PIL import Image

from sfr_diffusion.export import UNLEARNING_CONFIG_FILE, export_pipeline
from sfr_diffusion.methods import ESDConfig, GAConfig, SalUnConfig, SFROnConfig, get_method_class
from sfr_diffusion.pipelines import load_pipeline
from sfr_diffusion.text_data import read_prompts
from sfr_diffusion.training import CHECKPOINTS_MARKER, TrainingArguments
from sfr_diffusion.world import digits_ddpm_pipeline

ROOT = Path(__file__).resolve().parent.parent
ERASE = ROOT / "scripts" / "erase_concept.py"
SHORT = ["--max_train_steps", "1", "--forget_batch_size", "4", "--remain_batch_size", "4", "--skip_eval"]


def load_script():
    spec = importlib.util.spec_from_file_location("erase_concept_bad_inputs", ERASE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


script = load_script()


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
    ("lr-zero", ["--learning_rate", "0"], "argument --learning_rate: expected a number > 0", "parse"),
    ("lr-negative", ["--learning_rate=-1e-3"], "argument --learning_rate: expected a number > 0", "parse"),
    ("lr-text", ["--learning_rate", "fast"], "argument --learning_rate: expected a number, got 'fast'", "parse"),
    ("steps-fraction", ["--max_train_steps", "2.5"], "argument --max_train_steps: expected a whole number", "parse"),
    ("steps-zero", ["--max_train_steps", "0"], "argument --max_train_steps: expected a whole number >= 1", "parse"),
    ("forget-batch-zero", ["--forget_batch_size", "0"], "argument --forget_batch_size", "parse"),
    ("remain-batch-negative", ["--remain_batch_size", "-3"], "argument --remain_batch_size", "parse"),
    ("unknown-method", ["--method", "nope"], "argument --method: invalid choice: 'nope'", "parse"),
    ("unknown-optimizer", ["--optimizer", "sgd"], "argument --optimizer: invalid choice", "parse"),
    ("unknown-precision", ["--mixed_precision", "fp8"], "argument --mixed_precision: invalid choice", "parse"),
    ("unknown-trainable", ["--trainable", "heads"], "argument --trainable: invalid choice", "parse"),
    ("seed-negative", ["--seed", "-1"], "argument --seed: expected a whole number >= 0", "parse"),
    ("eval-every-zero", ["--eval_every", "0"], "argument --eval_every", "parse"),
    ("mask-batches-zero", ["--mask_batches", "0"], "argument --mask_batches", "parse"),
    ("unknown-forget-loss", ["--forget_loss", "forget"], "argument --forget_loss: invalid choice", "parse"),
    ("checkpointing-text", ["--checkpointing_steps", "often"], "argument --checkpointing_steps", "parse"),
    ("temperature-negative", ["--temperature", "-0.5"], "argument --temperature: expected a number >= 0", "parse"),
    ("dropout-nan", ["--label_dropout", "nan"], "argument --label_dropout", "parse"),
    ("unknown-option", ["--learning-rate", "1e-3"], "unrecognized arguments: --learning-rate", "parse"),
    ("output-user-folder", ["--output_dir", "project"], "is not an sfr-diffusion export", "setup"),
    ("output-current-folder", ["--output_dir", "."], "is the current folder", "setup"),
    ("output-parent-folder", ["--output_dir", ".."], "is the current folder or one above it", "setup"),
    ("output-is-a-file", ["--output_dir", "a-file"], "exists and is not a folder", "setup"),
    ("output-under-a-file", ["--output_dir", "a-file/erased"], "a-file is a file, not a folder", "setup"),
    ("output-earlier-export", ["--output_dir", "outputs/old-export"], "pass --overwrite_output_dir", "setup"),
    ("overwrite-user-folder", ["--output_dir", "project", "--overwrite_output_dir"], "never replaced", "setup"),
    ("empty-concept", ["--concept", "  "], "--concept is empty", "setup"),
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
    ("dropout-above-one", ["--label_dropout", "1.5"], "label_dropout must be in [0, 1), got 1.5", "setup"),
    ("salun-ratio", ["--method", "salun", "--mask_ratio", "2"], "mask_ratio must be in (0, 1], got 2.0", "setup"),
    ("anchor-for-classes", ["--anchor_concept", "a dog"], "--anchor_concept is for text-to-image models", "setup"),
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
    ("prompts-binary", ["--forget_prompts", "binary.txt"], "binary.txt is not UTF-8 text", "setup"),
    ("prompts-missing", ["--remain_prompts", "missing.txt"], "Prompt file missing.txt does not exist", "setup"),
    ("prompts-empty", ["--remain_prompts", "empty.txt"], "empty.txt holds no prompt", "setup"),
    ("prompts-for-classes", ["--forget_prompts", "a-file"], "are for text-to-image models", "setup"),
    ("data-one-class", ["--train_data_dir", "one-class"], "fewer than two class sub-folders", "data"),
    ("data-unknown-classes", ["--train_data_dir", "pets"], "classes ['cat', 'dog'] are not among", "data"),
    ("data-damaged-image", ["--train_data_dir", "damaged"], "broken.png (row", "data"),
    ("data-missing-folder", ["--train_data_dir", "no-such-folder"], "is not a folder", "data"),
    ("data-two-sources", ["--train_data_dir", "pets", "--dataset_name", "x"], "not both", "data"),
    (
        "mask-selects-nothing",
        ["--gamma", "1e30"],
        "saliency mask selects no weight (density 0 at gamma=1e+30)",
        "mask",
    ),
]


def reached(what: str):
    def spy(*args, **kwargs):
        raise AssertionError(f"reached {what} before failing")

    return spy


def run_cli(argv, monkeypatch, capsys, stage: str):
    """`cli(argv)`; the spies make a case that gets further than its stage fail the test."""
    if stage in ("parse", "setup"):
        for name in ("load_digits_dataset", "user_dataset", "generate_images", "verify_images"):
            monkeypatch.setattr(script, name, reached(f"data work ({name})"))
    if stage in ("parse", "setup", "data"):
        monkeypatch.setattr("sfr_diffusion.training.compute_saliency_mask", reached("the saliency mask"))
    monkeypatch.setattr("sfr_diffusion.training._optimizer_step", reached("a training step"))
    capsys.readouterr()
    AcceleratorState._reset_state(True)
    try:
        code = script.cli([*SHORT, *argv])
    finally:
        AcceleratorState._reset_state(True)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", CLI_CASES, ids=[case[0] for case in CLI_CASES])
def test_a_bad_command_line_is_one_line_and_changes_nothing(case, workdir, monkeypatch, capsys):
    _, argv, expected, stage = case
    monkeypatch.chdir(workdir)
    before = checksums(workdir)

    code, stderr = run_cli(argv, monkeypatch, capsys, stage)

    assert code == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("erase_concept.py: error: "), stderr
    assert expected in lines[-1], lines[-1]
    assert "Traceback" not in stderr
    assert checksums(workdir) == before  # nothing created, changed or removed


def test_debug_shows_the_traceback_instead(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    with pytest.raises(FileExistsError, match="not an sfr-diffusion export"):
        script.cli(["--output_dir", "project", "--debug"])
    monkeypatch.setenv("SFR_DIFFUSION_DEBUG", "1")
    with pytest.raises(FileExistsError):
        script.cli(["--output_dir", "project"])


def test_fp16_without_a_gpu_says_it_trains_in_fp32(caplog):
    with caplog.at_level("WARNING"):
        assert script.mixed_precision("fp16") == ("fp16" if script.torch.cuda.is_available() else "no")
    if not script.torch.cuda.is_available():
        assert "trains in fp32" in caplog.text


def test_default_folders_name_the_model(monkeypatch):
    def default(*argv):
        return script.default_output_dir(script.parse_args(list(argv)))

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
    assert script.cli([*SHORT, "--output_dir", str(out)]) == 0
    first = json.loads((out / UNLEARNING_CONFIG_FILE).read_text())
    AcceleratorState._reset_state(True)
    assert script.cli([*SHORT, "--output_dir", str(out), "--seed", "1", "--overwrite_output_dir"]) == 0
    AcceleratorState._reset_state(True)
    second = json.loads((out / UNLEARNING_CONFIG_FILE).read_text())
    assert (first["training"]["seed"], second["training"]["seed"]) == (0, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["erased"]  # no checkpoints, no staging left
