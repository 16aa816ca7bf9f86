"""Run the bad-input, export-recovery and app-refusal tests and write their counts to RELIABILITY.md.

    python benchmarks/reliability_report.py         # ~1 min on 2 CPU cores

Every case checksums the folder tree it runs in before and after, so a case passes only if no file outside what the
run created was changed or removed; "files lost" is the number of such changes in the cases that passed (0 unless
a case failed, which the table then shows). Everything reported is read from pytest's JUnit XML: which cases ran and
passed, and the stage each command-line case of tests/test_bad_inputs.py must fail by, which the case records with
``record_property("stage", stage)``.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from collections import Counter
from datetime import date
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
CLI_GROUP = "command line (`erase_concept.py`)"
GROUPS = {  # report row → (test file, test-name prefixes)
    CLI_GROUP: ("tests/test_bad_inputs.py", ("test_a_bad_command_line", "test_under_")),
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
# The parametrized command-line cases, each of which records the stage it must fail by.
STAGED_CASES, STAGES = "test_a_bad_command_line", ("parse", "config", "setup", "data", "mask")


class Case(NamedTuple):
    where: str  # the test's file, or its module as JUnit's classname gives it
    name: str
    ok: bool
    properties: dict[str, str]  # what the test recorded with pytest's `record_property`


def run_tests(junit: Path) -> list[Case]:
    """Run the report's test files; the cases, from the JUnit XML pytest writes to `junit`."""
    files = sorted({file for file, _ in GROUPS.values()})
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *files]
    done = subprocess.run(command, cwd=ROOT)
    if done.returncode not in (0, 1) or not junit.exists():  # 1: some cases failed, which the report shows
        raise RuntimeError(f"pytest did not run the cases (exit status {done.returncode}): {' '.join(command)}")
    return read_junit(junit)


def read_junit(junit: Path) -> list[Case]:
    """The cases that ran (skipped ones left out), from pytest's JUnit XML."""
    cases = []
    for case in ElementTree.parse(junit).iter("testcase"):
        if any(child.tag == "skipped" for child in case):
            continue
        failed = any(child.tag in ("failure", "error") for child in case)
        properties = {prop.get("name"): prop.get("value") for prop in case.iter("property")}
        cases.append(Case(case.get("file") or case.get("classname", ""), case.get("name"), not failed, properties))
    return cases


def group_cases(cases: list[Case], label: str) -> list[Case]:
    file, prefixes = GROUPS[label]
    module = file.removesuffix(".py").replace("/", ".")
    return [case for case in cases if (file in case.where or module in case.where) and case.name.startswith(prefixes)]


def cli_stages(cases: list[Case]) -> Counter:
    """How many command-line cases must fail by each stage, as each case recorded it."""
    staged = [case for case in group_cases(cases, CLI_GROUP) if case.name.startswith(STAGED_CASES)]
    stages = Counter(case.properties.get("stage") for case in staged)
    unknown = sorted(str(stage) for stage in stages if stage not in STAGES)
    if unknown:
        raise ValueError(
            f"{STAGED_CASES} cases recorded no stage or an unknown one ({', '.join(unknown)}; expected one of "
            f'{STAGES}): each must call record_property("stage", stage) (tests/test_bad_inputs.py).'
        )
    return stages


def render(cases: list[Case]) -> str:
    """RELIABILITY.md from the cases that ran."""
    rows, total, clear = [], 0, 0
    for label in GROUPS:
        mine = [case.ok for case in group_cases(cases, label)]
        total, clear = total + len(mine), clear + sum(mine)
        rows.append(f"| {label} | {len(mine)} | {sum(mine)} | {len(mine) - sum(mine)} |")
    stages = cli_stages(cases)
    return f"""# Reliability: bad inputs and interrupted exports

Measured by `python benchmarks/reliability_report.py` on {date.today().isoformat()} ({platform.machine()},
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
gets further): {stages["parse"]} at parsing, {stages["config"]} by the option dataclasses' own checks before the
model is loaded, {stages["setup"]} before any data is loaded, {stages["data"]} while
reading the data and before the saliency mask, {stages["mask"]} by the mask itself (a mask of density 0) before
the first training step. The app's refusals run several names or folders per test (tests/test_app.py).
"""


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=ROOT / "RELIABILITY.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        text = render(run_tests(Path(tmp) / "junit.xml"))
    args.output.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
