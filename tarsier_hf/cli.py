"""What the console scripts share: the flag vocabulary, the layout of `--help`, and how a load refused for want of
consent, or a run stopped before its work (`CommandStop`), ends.

Vocabulary (README, "What is here"): the model a command reads is `--model_name_or_path`, the folder it writes is
`--output_dir`, the one file it writes is `--output_file`, a folder of another command's results it reads is
`--input_dir`. A flag renamed to this vocabulary keeps its old name for one release: `renamed()` puts the new name
first in `--help` and warns (`FutureWarning`) when the old one is used. The dataclass fields keep their names, so
code that builds the arguments in Python is unchanged.
"""

from __future__ import annotations

import argparse
import functools
import sys
import warnings


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description keeps its line breaks (the example stays one command line); options show their defaults."""


def help_text(summary: str, *examples: str, usage: str | None = None) -> dict:
    """`ArgumentParser` keyword arguments for a command's `--help`: `summary` (one sentence on what the command does)
    and its example command lines at the top, under the usage line; `usage` replaces a usage line too long to read."""
    description = summary + "\n\nexample:\n" + "\n".join(f"  {line}" for line in examples)
    kwargs = {"description": description, "formatter_class": HelpFormatter}
    if usage is not None:
        kwargs["usage"] = usage
    return kwargs


def _spellings(flag: str) -> list[str]:
    return list(dict.fromkeys([flag, flag.replace("_", "-")]))


def renamed(new: str, *old: str) -> dict:
    """Field metadata for `HfArgumentParser`: the option is spelt `new`, and each of `old` still parses, with a
    `FutureWarning` naming `new`. Works whatever the field is called (its own `--name` is one of `new` or `old`)."""
    deprecated = tuple(old)

    class RenamedFlag(argparse._StoreAction):
        def __init__(self, option_strings, dest, **kwargs):
            # the field's own --name comes first from HfArgumentParser: list the new spellings first, once each
            names = _spellings(new) + [s for s in dict.fromkeys(option_strings) if s not in _spellings(new)]
            kwargs.setdefault("metavar", new.lstrip("-").upper())
            if kwargs.get("help"):
                kwargs["help"] += f" (formerly {', '.join(deprecated)})"
            super().__init__(names, dest, **kwargs)

        def __call__(self, parser, namespace, values, option_string=None):
            if option_string in deprecated:
                warnings.warn_explicit(
                    f"{option_string} is deprecated and will be removed in the next release; use {new}",
                    FutureWarning, filename=parser.prog, lineno=0, module=__name__)
            super().__call__(parser, namespace, values, option_string)

    return {"aliases": [*_spellings(new), *deprecated], "action": RenamedFlag}


def take_positional(parser: argparse.ArgumentParser, value: str | None, positional: str | None, new: str) -> str:
    """The value of flag `new`, or of the positional argument it replaced (with a `FutureWarning`); both or neither
    is a usage error."""
    if positional is not None:
        if value is not None:
            parser.error(f"give the model once: {new} (the positional form is deprecated)")
        warnings.warn_explicit(
            f"the positional model argument is deprecated and will be removed in the next release; use {new}",
            FutureWarning, filename=parser.prog, lineno=0, module=__name__)
        return positional
    if value is None:
        parser.error(f"the following arguments are required: {new}")
    return value


class CommandStop(Exception):
    """An error that ends a command with its message (`error: ...` on stderr, exit status 1), not a traceback: what
    stopped it is said in full and nothing deeper is wrong (e.g. `tarsier_hf.eval.common.PreflightError`). Raise a
    subclass; `consent_boundary` turns it into the exit."""


def consent_boundary(main):
    """Wrap a command's `main`: a load that needs the checkpoint's own code and was not allowed ends with one line
    naming the flag (`error: ... pass --trust_remote_code true ...`) and `SystemExit(2)`, as argparse's usage
    errors do, not a traceback; a `CommandStop` ends with `error: <message>` and `SystemExit(1)`."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except CommandStop as error:
            raise SystemExit(f"error: {error}") from None
        except ValueError as error:
            from tarsier_hf.families import RemoteCodeRequiredError  # torch: only once a command has failed

            if not isinstance(error, RemoteCodeRequiredError):
                raise
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
