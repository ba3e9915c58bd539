"""Command line: `python -m tarsier_hf.dream_s --output_dir DIR --seed S --num-train N --num-test M`."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from tarsier_hf.cli import help_text

from .build import BuildConfig, build_dataset


@dataclass
class DisplayArguments:
    no_progress: bool = field(default=False, metadata={"help": "hide the progress bar"})


def parse_args(argv: list[str] | None = None) -> tuple[BuildConfig, bool]:
    """Returns the build options and whether to show the progress bar (options as `--num_train` or `--num-train`)."""
    parser = HfArgumentParser((BuildConfig, DisplayArguments), prog="python -m tarsier_hf.dream_s", **help_text(
        "Generate DREAM-S, synthetic motion clips with exact event ground truth, and its stage-0/1/2 and test JSONL "
        "files into --output_dir.",
        "tarsier-dream-s --output_dir data/dream_s --seed 0 --num_train 300 --num_test 60",
        usage="%(prog)s --output_dir DIR [--seed N] [--num_train N] [--num_test N] [options]"))
    config, display = parser.parse_args_into_dataclasses(args=argv)
    return config, not display.no_progress


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
