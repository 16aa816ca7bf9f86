"""The Gradio app (sfr_diffusion/app.py, launched by app.py or `sfr-app`): its API through gradio_client, its event
handlers directly, and the compare view in a real headless Chromium.

The browser test drives Debian's ``chromium`` (Playwright's own browser download does not work offline). It skips
when /usr/bin/chromium is missing, unless SFR_REQUIRE_BROWSER is set, as CI sets it: there it must run.
"""

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from accelerate.state import AcceleratorState, PartialState  # noqa: E402
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError, AuthenticationError  # noqa: E402
from PIL import Image  # noqa: E402

import sfr_diffusion.app as app  # noqa: E402
from sfr_diffusion.commands import erase as erase_command  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
# The README's screenshot; the test refreshes it when SFR_UPDATE_SCREENSHOT is set, else writes to a temporary folder.
README_SCREENSHOT = ROOT / "docs" / "app_compare.png"
# Flags measured to work for Debian's chromium under Playwright in a container (no GPU, no sandbox, no network).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
# A short erasure of "three" from the bundled DDPM, with FA/RA before and after, for the comparisons and the
# screenshot: enough for the erased model to stop drawing threes (FA 1.0 → 0.0 at 10 samples per class).
ERASE_THREE = [
    "--concept", "three", "--max_train_steps", "10", "--forget_batch_size", "32", "--remain_batch_size", "32",
    "--eval_samples_per_class", "10",
]  # fmt: skip

# The ten digits as the grid shows them: five per row, each 8×8 digit upscaled ×8 above a band with its class name.
GRID_SIZE = (5 * 64 + 4 * app.GRID_GAP, 2 * (64 + app.GRID_LABEL_HEIGHT) + app.GRID_GAP)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(**kwargs):
    cache = app.PipelineCache()
    demo = app.build_demo(cache=cache, **kwargs)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    return demo, cache, f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A working directory whose outputs/ holds one real (short) erasure of "three" from the bundled DDPM."""
    folder = tmp_path_factory.mktemp("workdir")
    # The command line's own entry point, in this process: it records the bundled base model the way the app reads it.
    erase_command.main([*ERASE_THREE, "--output_dir", str(folder / "outputs" / "erase-three")])
    return folder


@pytest.fixture(scope="module")
def served(workdir):
    """The app as `python app.py` starts it there (no arguments): it finds the export and picks its base model.

    Run from `workdir` so that the page shows paths as a user sees them (outputs/erase-three) in the screenshot.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        demo, cache, url = serve(outputs_dirs=[app.DEFAULT_OUTPUTS_DIR])
        try:
            outputs = Path(app.DEFAULT_OUTPUTS_DIR)
            yield SimpleNamespace(url=url, cache=cache, outputs=outputs, export=str(outputs / "erase-three"))
        finally:
            demo.close()


@pytest.fixture(scope="module")
def client(served):
    return Client(served.url, verbose=False)


def compare(client, original, erased, class_name=app.ALL_CLASSES, prompt="", seed=0, steps=20, guidance=2.0):
    return client.predict(original, erased, class_name, prompt, seed, steps, guidance, api_name="/compare")


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def erase(client, name, replace, concept="seven", steps=2):
    """The Erase tab's API with evaluation off: as short as an erasure gets."""
    return client.predict("digits-ddpm", concept, steps, 0, 0, name, replace, api_name="/erase")


def tree(folder: Path) -> dict[str, str]:
    """Every path under `folder`, with a digest of each file's bytes: equal trees mean nothing was written."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
        for path in sorted(folder.rglob("*"))
    }


def test_compare_side_by_side_same_seed(served, client):
    original, erased, card = compare(client, "digits-ddpm", served.export)
    assert Image.open(original).size == Image.open(erased).size == GRID_SIZE
    assert Image.open(original).format == "PNG"
    band = pixels(original)[64 : 64 + app.GRID_LABEL_HEIGHT, :64]  # under the first cell: "zero"
    assert (band < 128).any(), "the grid's cells are labelled with their class names"
    # The card: what was erased, how, for how long, FA/RA before and after.
    assert "'three'" in card and "sfr_on" in card and "**iterations** 10" in card
    assert "| before |" in card and "| after |" in card and "FA" in card and "RA" in card

    # Same seed, same settings: the same images; the erased model differs from the original on its class.
    again, _, _ = compare(client, "digits-ddpm", served.export)
    np.testing.assert_array_equal(pixels(again), pixels(original))
    three_before, three_after, _ = compare(client, "digits-ddpm", served.export, class_name="three")
    assert Image.open(three_before).size == (app.DISPLAY_SIZE, app.DISPLAY_SIZE)
    assert not np.array_equal(pixels(three_before), pixels(three_after))
    other_seed, _, _ = compare(client, "digits-ddpm", served.export, class_name="three", seed=1)
    assert not np.array_equal(pixels(other_seed), pixels(three_before))

    # Each pipeline was loaded once, however many requests used it.
    assert sorted(served.cache.loads.values()) == [1, 1]


def test_errors_are_readable_and_the_app_keeps_serving(served, client):
    cases = {
        "not a pipeline": ("no/such/folder", served.export),
        "Incompatible pipelines: the original is a dit model": ("digits-dit", served.export),
        "Pick an erased pipeline": ("digits-ddpm", ""),
    }
    for message, (original, erased) in cases.items():
        with pytest.raises(AppError, match=message):
            compare(client, original, erased, steps=2)
    with pytest.raises(AppError, match="Unknown class 'eleven'"):
        compare(client, "digits-ddpm", served.export, class_name="eleven", steps=2)
    # Text-to-image (the bundled digits SD against itself): an empty prompt is refused, a prompt is sampled.
    with pytest.raises(AppError, match="Type a prompt"):
        compare(client, "digits-sd", "digits-sd", prompt="  ", steps=2)
    left, right, card = compare(client, "digits-sd", "digits-sd", prompt="the number 3", steps=2)
    np.testing.assert_array_equal(pixels(left), pixels(right))
    assert "not an sfr-diffusion export" in card and "prompt 'the number 3'" in card

    original, erased, _ = compare(client, "digits-ddpm", served.export, class_name="three", steps=2)
    assert Image.open(original).size == Image.open(erased).size


def test_erase_tab_streams_progress_and_offers_the_export(served, client):
    job = client.submit("digits-ddpm", "seven", 4, 2, 5, "", api_name="/erase")
    progress, curve, card, erased_update, original_update = job.result(timeout=300)
    updates = job.outputs()
    assert "Preparing" in updates[0][0] and any("Iteration" in u[0] for u in updates[1:-1])
    assert any(u[1] and u[1]["data"] for u in updates[1:-1])  # the FA/RA curve while it runs
    assert '<progress value="4" max="4"' in progress and "Done in" in progress
    assert "'seven'" in card and "| after |" in card
    assert {(step, metric) for step, metric, _ in curve["data"]} >= {(s, m) for s in (0, 2, 4) for m in ("FA", "RA")}

    # Offered for comparison: the compare tab's erased pipelines now list the export and select it, with the model
    # it was erased from as the original; the pair compares.
    erased, original = erased_update["value"], original_update["value"]
    assert erased in [path for _, path in erased_update["choices"]] and original == "digits-ddpm"
    assert Path(erased).parent == served.outputs and (Path(erased) / "unlearning_config.json").is_file()
    before, after, card = compare(client, original, erased, class_name="seven", steps=2)  # the compare tab's card
    assert "'seven'" in card and Image.open(before).size == Image.open(after).size

    with pytest.raises(AppError, match="Type what to erase"):
        client.predict("digits-ddpm", " ", 4, 2, 5, "", api_name="/erase")


def test_export_names_that_are_not_plain_names_are_refused_before_any_work(served, client):
    # Everything the tests write lives under pytest's base folder, which holds the app's working folder: a name that
    # escaped outputs/ (../escape lands beside it, '..' is the working folder itself) would show up in this tree.
    root = served.outputs.resolve().parent.parent
    before = tree(root)
    refusals = {
        "../escape": "is a path",
        "a/b": "is a path",
        "a\\b": "is a path",
        "..": "the outputs folder or the one above it",
        ".": "the outputs folder or the one above it",
        ".hidden": "starts with '.'",
        "bad|name": "contains '|'",
        "x" * (app.MAX_EXPORT_NAME_LENGTH + 1): f"at most {app.MAX_EXPORT_NAME_LENGTH}",
    }
    for name, message in refusals.items():
        for replace in (False, True):
            with pytest.raises(AppError, match=re.escape(message)):
                erase(client, name, replace)
    assert tree(root) == before


def test_export_name_rule():
    default = "app-digits-ddpm-erase-three"
    assert app.export_name("", default) == app.export_name("   ", default) == app.export_name(None, default) == default
    assert app.export_name("  my export v1.2_b-3 ", default) == "my export v1.2_b-3"
    with pytest.raises(ValueError, match=re.escape(app.EXPORT_NAME_RULE)):
        app.export_name("café", default)


def test_grid_cells_carry_their_class_names():
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    digits = [Image.new("L", (8, 8), 0) for _ in names]  # black 8×8 cells, upscaled ×8 into the grid
    bare, labelled = app.display(digits), app.display(digits, names)
    assert bare.size == (GRID_SIZE[0], 2 * 64 + app.GRID_GAP)
    assert labelled.size == GRID_SIZE  # taller by one label band per row

    grid = np.asarray(labelled.convert("L"))
    bands = []
    for index in range(len(names)):
        row, column = divmod(index, app.GRID_COLUMNS)
        x, y = column * (64 + app.GRID_GAP), row * (64 + app.GRID_LABEL_HEIGHT + app.GRID_GAP)
        assert (grid[y : y + 64, x : x + 64] == 0).all()  # the cell itself, untouched
        band = grid[y + 64 : y + 64 + app.GRID_LABEL_HEIGHT, x : x + 64]
        assert (band < 128).any() and (band == 255).any()  # dark text on white
        bands.append(band)
    assert not np.array_equal(bands[0], bands[1])  # each cell its own name
    again = np.asarray(app.display(digits, names).convert("L"))
    np.testing.assert_array_equal(again, grid)  # the same grid every time

    # A name too long for its cell is shortened to fit: the gap between two cells stays white.
    long = np.asarray(app.display(digits[:2], ["a class name far too long for a cell", "one"]).convert("L"))
    assert (long[:, 64 : 64 + app.GRID_GAP] == 255).all()
    # One image is shown alone, without a label.
    assert app.display(digits[:1], names[:1]).size == (app.DISPLAY_SIZE, app.DISPLAY_SIZE)


def test_two_erasures_in_a_row_need_no_accelerate_reset(tmp_path, monkeypatch):
    """erase() builds an Accelerator per call: the app runs one erasure after another without touching accelerate's
    private state (it used to reset it around each run of the script)."""

    def forbidden(*_):
        raise AssertionError("accelerate's private state was reset")

    monkeypatch.setattr(AcceleratorState, "_reset_state", staticmethod(forbidden))
    monkeypatch.setattr(PartialState, "_reset_state", staticmethod(forbidden))
    outputs = tmp_path / "outputs"
    handlers = app.AppHandlers(app.PipelineCache(), outputs_dirs=[outputs])
    for name, concept in (("first", "seven"), ("second", "one")):
        updates = list(handlers.erase("digits-ddpm", concept, 1, 0, 0, name, False))
        progress, _, card, erased_update, original_update = updates[-1]
        assert "Done in" in progress and f"'{concept}'" in card
        assert erased_update["value"] == str(outputs / name) and original_update["value"] == "digits-ddpm"
        config = json.loads((outputs / name / "unlearning_config.json").read_text())
        assert config["erased"]["concept"] == concept and config["steps"] == 1
        # How the command line names a bundled base model, so that the app finds the original of either export.
        assert config["base_model"] == "digits-ddpm (bundled digits world)"
        assert app.original_of(config) == "digits-ddpm"

    # The app calls the library: it loads no script as a module and resets nothing.
    for path in (ROOT / "app.py", ROOT / "sfr_diffusion" / "app.py"):
        text = path.read_text()
        for forbidden_text in ("_reset_state", "spec_from_file_location", "importlib", "load_erase_script"):
            assert forbidden_text not in text, f"{path.name} mentions {forbidden_text}"


def test_the_launcher_and_an_optional_gradio():
    """The package imports without Gradio; `python app.py` runs sfr_diffusion.app with the same flags."""
    script = """if True:
        import runpy, sys
        import sfr_diffusion, sfr_diffusion.erasure
        assert "gradio" not in sys.modules, "importing the package imported gradio"
        sys.argv = ["app.py", "--help"]
        runpy.run_path("app.py", run_name="__main__")
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    shown = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("usage: app.py")
    for flag in ("--original", "--erased", "--outputs_dir", "--host", "--port", "--share", "--auth"):
        assert flag in shown.stdout


def test_existing_files_and_folders_are_never_replaced(served, client):
    user_folder, user_file, link = (served.outputs / name for name in ("my-files", "notes.txt", "link"))
    user_folder.mkdir()
    (user_folder / "thesis.txt").write_text("a user's work")
    user_file.write_text("a user's notes")
    link.symlink_to(served.export, target_is_directory=True)  # a link to an export is not an export here
    root = served.outputs.resolve().parent.parent
    before = tree(root)
    try:
        for name in ("my-files", "notes.txt", "link"):
            for replace in (False, True):  # never, even with the box ticked
                with pytest.raises(AppError, match="exists and is not an sfr-diffusion export; choose another name"):
                    erase(client, name, replace)
        # An earlier export is replaced only with the box ticked.
        with pytest.raises(AppError, match=re.escape(f"tick {app.REPLACE_LABEL!r} to replace it")):
            erase(client, Path(served.export).name, False)
        assert tree(root) == before
        assert (user_folder / "thesis.txt").read_text() == "a user's work"
    finally:
        shutil.rmtree(user_folder)
        user_file.unlink()
        link.unlink()


def test_the_replace_box_replaces_an_earlier_export(served, client):
    target = served.outputs / "replace-me"
    shutil.copytree(served.export, target)  # an earlier export of "three"
    (target / "left-by-the-earlier-export.txt").write_text("")
    progress, _, card, erased_update, _ = erase(client, target.name, True, concept="seven")
    assert "Done in" in progress and "'seven'" in card
    assert erased_update["value"] == str(target)
    assert json.loads((target / "unlearning_config.json").read_text())["erased"]["concept"] == "seven"
    assert not (target / "left-by-the-earlier-export.txt").exists()  # replaced whole, not written into
    assert not list(served.outputs.glob(".replace-me*"))  # no staging folder left behind


def test_run_failures_are_one_line():
    assert app.failure_text(FileExistsError("outputs/x is an export")) == "outputs/x is an export"
    assert app.failure_text(ValueError("Unknown class 'eleven'")) == "Unknown class 'eleven'"
    assert app.failure_text(RuntimeError("CUDA out of memory")) == "RuntimeError: CUDA out of memory"
    assert "no result" in app.failure_text(None)


def test_auth_from_the_flag_or_the_environment(monkeypatch, capsys):
    monkeypatch.delenv(app.AUTH_ENV, raising=False)
    assert app.parse_args([]).auth is None
    assert app.parse_args(["--auth", "u:p"]).auth == ("u", "p")
    assert app.parse_args(["--auth", "u:p:with:colons"]).auth == ("u", "p:with:colons")
    for bad in ("nocolon", ":p", "u:", ""):
        with pytest.raises(SystemExit):
            app.parse_args(["--auth", bad])
        assert "USER:PASSWORD" in capsys.readouterr().err
    monkeypatch.setenv(app.AUTH_ENV, "env-user:env-password")
    assert app.parse_args([]).auth == ("env-user", "env-password")
    assert app.parse_args(["--auth", "u:p"]).auth == ("u", "p")  # the flag wins
    monkeypatch.setenv(app.AUTH_ENV, "nocolon")
    with pytest.raises(SystemExit):
        app.parse_args([])
    assert "nocolon" not in capsys.readouterr().err  # a malformed value may still hold a password: not echoed
    assert app.parse_args(["--auth", "u:p"]).auth == ("u", "p")


def test_serving_beyond_this_machine_without_auth_is_warned_about(caplog, capsys):
    with caplog.at_level(logging.WARNING, logger=app.__name__):
        for host, share in [("0.0.0.0", False), ("192.168.1.5", False), ("myhost", False), ("127.0.0.1", True)]:
            caplog.clear()
            message = app.warn_if_unprotected(host, share, None)
            assert message is not None and "without authentication" in message and "--auth" in message
            assert [record.getMessage() for record in caplog.records] == [message]
            assert message in capsys.readouterr().err
        caplog.clear()
        for host in ("127.0.0.1", "127.1.2.3", "localhost", "::1", "[::1]"):
            assert app.warn_if_unprotected(host, False, None) is None
        assert app.warn_if_unprotected("0.0.0.0", True, ("u", "p")) is None
        assert not caplog.records and not capsys.readouterr().err


def test_main_launches_with_auth_and_warns_without(monkeypatch, caplog):
    monkeypatch.delenv(app.AUTH_ENV, raising=False)
    launches = []
    monkeypatch.setattr(app, "build_demo", lambda **_: SimpleNamespace(launch=lambda **kw: launches.append(kw)))
    with caplog.at_level(logging.WARNING, logger=app.__name__):
        app.main(["--host", "0.0.0.0", "--auth", "u:p"])
        assert not caplog.records
        app.main(["--host", "0.0.0.0"])
        assert "without authentication" in caplog.text
    assert [(kw["server_name"], kw["share"], kw["auth"]) for kw in launches] == [
        ("0.0.0.0", False, ("u", "p")),
        ("0.0.0.0", False, None),
    ]


def test_a_page_with_auth_needs_the_login(tmp_path):
    demo = app.build_demo(outputs_dirs=[tmp_path / "outputs"], cache=app.PipelineCache())
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True, auth=("u", "p"))
    try:
        url = f"http://127.0.0.1:{port}/"
        with pytest.raises(AuthenticationError, match="credentials were not provided"):
            Client(url, verbose=False)
        card, _, _ = Client(url, auth=("u", "p"), verbose=False).predict(
            "digits-ddpm", "", app.ALL_CLASSES, "", api_name="/describe"
        )
        assert "No erased pipeline yet" in card
    finally:
        demo.close()


def test_no_arguments_and_no_exports_yet(tmp_path):
    args = app.parse_args([])
    assert (args.original, args.erased, args.host, args.port, args.share) == (None, [], "127.0.0.1", 7860, False)
    with pytest.raises(SystemExit):
        app.parse_args(["--erased", str(tmp_path / "missing")])

    demo, _, url = serve(outputs_dirs=[tmp_path / "outputs"])
    try:
        client = Client(url, verbose=False)
        card, _, _ = client.predict("digits-ddpm", "", app.ALL_CLASSES, "", api_name="/describe")
        assert "No erased pipeline yet" in card
        with pytest.raises(AppError, match="Pick an erased pipeline"):
            compare(client, "digits-ddpm", "")
    finally:
        demo.close()


def test_browser_renders_the_comparison(served, tmp_path):
    if not CHROMIUM.exists():
        if os.environ.get("SFR_REQUIRE_BROWSER"):
            pytest.fail(f"SFR_REQUIRE_BROWSER is set but {CHROMIUM} is missing: apt-get install -y chromium")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    screenshot = README_SCREENSHOT if os.environ.get("SFR_UPDATE_SCREENSHOT") else tmp_path / "app_compare.png"

    both_rendered = """() => ['#original-image img', '#erased-image img'].every(selector => {
        const image = document.querySelector(selector);
        return image !== null && image.complete && image.naturalWidth > 0;
    })"""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(served.url)
            page.click("#compare-button")
            page.wait_for_function(both_rendered, timeout=60_000)
            widths = page.eval_on_selector_all(
                "#original-image img, #erased-image img", "images => images.map(image => image.naturalWidth)"
            )
            assert widths == [GRID_SIZE[0]] * 2
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert Image.open(screenshot).width == 1280
