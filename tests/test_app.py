"""The Gradio app (app.py): its API through gradio_client, and the compare view in a real headless Chromium.

The browser test drives Debian's ``chromium`` (Playwright's own browser download does not work offline). It skips
when /usr/bin/chromium is missing, unless SFR_REQUIRE_BROWSER is set, as CI sets it: there it must run.
"""

import importlib.util
import os
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from accelerate.state import AcceleratorState  # noqa: E402
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from PIL import Image  # noqa: E402

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


def load_app():
    spec = importlib.util.spec_from_file_location("app", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["app"] = module  # dataclasses resolve the module's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


app = load_app()


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
    AcceleratorState._reset_state(True)
    try:
        app.load_erase_script().main([*ERASE_THREE, "--output_dir", str(folder / "outputs" / "erase-three")])
    finally:
        AcceleratorState._reset_state(True)
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


def test_compare_side_by_side_same_seed(served, client):
    original, erased, card = compare(client, "digits-ddpm", served.export)
    grid = (5 * 64 + 4 * app.GRID_GAP, 2 * 64 + app.GRID_GAP)  # ten 8×8 digits, upscaled ×8, five per row
    assert Image.open(original).size == Image.open(erased).size == grid
    assert Image.open(original).format == "PNG"
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
            assert widths == [5 * 64 + 4 * app.GRID_GAP] * 2
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert Image.open(screenshot).width == 1280
