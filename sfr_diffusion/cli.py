"""Command lines generated from the option dataclasses: one default and one help text per option, in the field.

Each field of a dataclass becomes ``--field_name`` (plus its ``aliases``); a boolean that is off by default becomes a
switch, one that is on by default gets its ``negative`` switch (``--no_mask``); one with ``several`` in its metadata
takes one value or more (a list; the erase command's ``--concept``); ``int`` and ``float`` values must be
finite numbers, and ``none`` clears an optional number. Values are then checked by the dataclass itself, so the
library and the command line refuse the same things. Errors are one line, as is every user error of our commands.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import MISSING, fields

from .validation import USER_ERRORS, one_line


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line (its usage text for this many options would bury the message)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class ExtendDefault(argparse.Action):
    """A flag that takes one value or several (``--x a b``, or ``--x a --x b``): its first use replaces the default,
    later uses add to it (argparse's ``extend`` would add to the default)."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, (given if given is not self.default else []) + list(values))


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description as written (its examples keep their lines) and every option's default."""


def number(kind: type, optional: bool = False) -> Callable[[str], float | int | None]:
    """An argparse type: the text as an ``int`` or a finite ``float`` (``none`` → None where the field allows)."""
    noun = "a whole number" if kind is int else "a number"

    def parse(text: str):
        if optional and text.strip().lower() == "none":
            return None
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if not math.isfinite(value):  # float("nan") parses, and passes every comparison-based check after
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        return value

    return parse


def _kinds(field) -> set[str]:
    return {part.strip() for part in str(field.type).split("|")}


def _default(field):
    return field.default if field.default is not MISSING else None


def field_flags(field) -> list[str]:
    """The flags of a field: ``--name`` and its aliases, or for a boolean that is on by default its off switch."""
    if _kinds(field) == {"bool"} and _default(field):
        return [field.metadata.get("negative", f"--no_{field.name}")]
    return [f"--{field.name}", *field.metadata.get("aliases", ())]


def dataclass_flags(cls) -> list[str]:
    """Every flag the fields of `cls` become."""
    return [flag for field in fields(cls) for flag in field_flags(field)]


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, title: str) -> list[str]:
    """Add a flag per field of `cls` in a group named `title`; returns the flags added."""
    group = parser.add_argument_group(title)
    for field in fields(cls):
        metadata, kinds, flags = dict(field.metadata), _kinds(field), field_flags(field)
        help_text = metadata.get("help", "")
        if kinds == {"bool"}:
            on = bool(_default(field))
            group.add_argument(*flags, dest=field.name, action="store_false" if on else "store_true",
                               help=f"Off: {help_text}" if on else help_text)  # fmt: skip
            continue
        kwargs = {"dest": field.name, "default": _default(field), "help": help_text}
        if "choices" in metadata:
            kwargs["choices"] = list(metadata["choices"])
        if metadata.get("several"):
            kwargs.update(nargs="+", action=ExtendDefault)
        if "str" not in kinds and ("int" in kinds or "float" in kinds):
            kwargs["type"] = number(int if "float" not in kinds else float, optional="None" in kinds)
        group.add_argument(*flags, **kwargs)
    return dataclass_flags(cls)


def dataclass_from_args(cls, namespace: argparse.Namespace, **overrides):
    """An instance of `cls` from the parsed values of its fields, `overrides` replacing some (it validates itself)."""
    return cls(**{field.name: getattr(namespace, field.name) for field in fields(cls)} | overrides)


def run_command(main: Callable[[Sequence[str]], object], argv: Sequence[str] | None, prog: str) -> int:
    """Run a command's `main`: a user's mistake is one line on stderr and exit status 2 (the traceback with
    ``--debug`` or ``SFR_DIFFUSION_DEBUG=1``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("SFR_DIFFUSION_DEBUG", "") not in ("", "0")
    try:
        main(argv)
    except SystemExit as exit_:  # argparse has printed its one line (or the help)
        return exit_.code if isinstance(exit_.code, int) else 2
    except USER_ERRORS as error:
        if debug:
            raise
        print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
        return 2
    return 0
