"""Run the bad-input, export-recovery and app-refusal tests and write their counts to RELIABILITY.md.

    python scripts/reliability_report.py            # ~1 min on 2 CPU cores

Every case checksums the folder tree it runs in before and after, so a case passes only if no file outside what the
run created was changed or removed; "files lost" is the number of such changes in the cases that passed (0 unless
a case failed, which the table then shows).
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from collections import Counter
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GROUPS = {  # report row → (test file, test-name prefixes)
    "command line (`erase_concept.py`)": ("tests/test_bad_inputs.py", ("test_a_bad_command_line", "test_under_")),
    "library calls": (
        "tests/test_bad_inputs.py",
        ("test_a_bad_library_call", "test_load_pipeline", "test_read_prompts", "test_export_pipeline"),
    ),
    "export onto existing paths, kills mid-swap": (
        "tests/test_export.py",
        ("test_a_", "test_an_", "test_re_export", "test_the_current", "test_staging", "test_failed"),
    ),
    "app (Erase tab names, replace box)": (
        "tests/test_app.py",
        ("test_export_names", "test_existing_files", "test_export_name_rule", "test_run_failures"),
    ),
}


def run_tests(junit: Path) -> list[tuple[str, str, bool]]:
    files = sorted({file for file, _ in GROUPS.values()})
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *files])
    cases = []
    for case in ElementTree.parse(junit).iter("testcase"):
        failed = any(child.tag in ("failure", "error") for child in case)
        skipped = any(child.tag == "skipped" for child in case)
        if not skipped:
            cases.append((case.get("file") or case.get("classname", ""), case.get("name"), not failed))
    return cases


def cli_stages() -> Counter:
    spec = importlib.util.spec_from_file_location("bad_inputs", ROOT / "tests" / "test_bad_inputs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return Counter(stage for *_, stage in module.CLI_CASES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(ROOT / "RELIABILITY.md"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cases = run_tests(Path(tmp) / "junit.xml")
    rows, total, clear = [], 0, 0
    for label, (file, prefixes) in GROUPS.items():
        module = file.removesuffix(".py").replace("/", ".")
        mine = [ok for where, name, ok in cases if module in where and name.startswith(prefixes)]
        total, clear = total + len(mine), clear + sum(mine)
        rows.append(f"| {label} | {len(mine)} | {sum(mine)} | {len(mine) - sum(mine)} |")
    stages = cli_stages()
    text = f"""# Reliability: bad inputs and interrupted exports

Measured by `python scripts/reliability_report.py` on {date.today().isoformat()} ({platform.machine()},
{platform.python_version()}, {platform.system()}). Each case gives a bad input (or kills an export between its
renames) and asserts a non-zero exit or a raised error, one line naming the problem, the stage it fails by, and —
by checksumming the whole folder tree before and after — that no file the run did not create was changed or
removed. A row's "clear" count is the cases that passed all of that.

| inputs | cases | clear errors / recovered | failed |
|---|---|---|---|
{chr(10).join(rows)}
| **all** | **{total}** | **{clear}** | **{total - clear}** |

Files lost (changed or removed outside what a run created): **{0 if clear == total else "see failed cases"}**.

Command-line cases by the stage they must fail by (spies on the data, mask and training steps fail a case that
gets further): {stages["parse"]} at parsing, {stages["setup"]} before any data is loaded, {stages["data"]} while
reading the data and before the saliency mask, {stages["mask"]} by the mask itself (a mask of density 0) before
the first training step. The app's refusals run several names or folders per test (tests/test_app.py).
"""
    Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
