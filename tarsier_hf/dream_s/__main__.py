"""Command line: `python -m tarsier_hf.dream_s --out DIR --seed S --num-train N --num-test M`."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from .build import BuildConfig, build_dataset


def parse_args(argv: list[str] | None = None) -> tuple[BuildConfig, bool]:
    """Returns the build options and whether to show the progress bar."""
    parser = argparse.ArgumentParser(prog="python -m tarsier_hf.dream_s", description=__doc__)
    for f in dataclasses.fields(BuildConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.default is dataclasses.MISSING:
            parser.add_argument(flag, dest=f.name, required=True, type=str, help=f.metadata.get("help"))
        else:
            help_text = f"{f.metadata.get('help', '')} (default: {f.default})".strip()
            parser.add_argument(flag, dest=f.name, type=type(f.default), default=f.default, help=help_text)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = vars(parser.parse_args(argv))
    no_progress = args.pop("no_progress")
    return BuildConfig(**args), not no_progress


def main(argv: list[str] | None = None) -> int:
    config, progress = parse_args(argv)
    try:
        info = build_dataset(config, progress=progress)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as err:
        print(f"error: cannot build DREAM-S in {config.out}: {err}", file=sys.stderr)
        return 1
    counts = info["counts"]
    print(
        f"DREAM-S written to {config.out}: {counts['train_clips']} train clips "
        f"({counts['stage1_rows']} stage-1 rows, {counts['stage2_rows']} stage-2 rows), "
        f"{counts['test_clips']} test clips, {len(info['heldout_combinations'])} held-out combinations"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
