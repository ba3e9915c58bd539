"""Command line (`tarsier-side-by-side`, or `python -m tarsier_hf.eval.side_by_side`):

    tarsier-side-by-side serve --results tarsier.jsonl baseline.jsonl --videos DIR --output_dir runs/sbs
    tarsier-side-by-side report --input_dir runs/sbs [runs/other ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from tarsier_hf.cli import help_text, renamed

from .labels import LabelError
from .report import report
from .results import ResultsError
from .server import serve
from .session import SessionError, open_session


@dataclass
class ServeArgs:
    """Sample pairs (once per --output_dir folder) and serve the labelling page on 127.0.0.1."""

    results: list[str] = field(metadata={"help": "the two models' result JSONL files (scores are from the first's side)"})
    videos: str = field(default=".", metadata={"help": "folder that relative video paths are resolved against"})
    out: str = field(default="side_by_side_run", metadata={"help": "session folder: session.json and labels/<annotator>.jsonl",
                                                           **renamed("--output_dir", "--out")})
    num: int = field(default=100, metadata={"help": "videos to sample from the ids present in both files (0 = all)"})
    seed: int = field(default=0, metadata={"help": "seed of the sample and of the A/B order"})
    name_1: str | None = field(default=None, metadata={"help": "display name of model 1 (default: its 'model' field or file name)"})
    name_2: str | None = field(default=None, metadata={"help": "display name of model 2"})
    annotators: str | None = field(default=None, metadata={"help": "comma-separated names: deal the pairs out so each annotator gets a disjoint share (the paper's design); default: everyone labels every pair"})
    overlap: int = field(default=0, metadata={"help": "with --annotators: the first N sampled pairs go to every annotator (for agreement)"})
    port: int = field(default=8765, metadata={"help": "port on 127.0.0.1 (0 = any free port)"})
    frames: int = field(default=8, metadata={"help": "thumbnails shown in frame view"})
    verbose: bool = field(default=False, metadata={"help": "log every request"})


@dataclass
class ReportArgs:
    """Print win / same / loss, advantage with a bootstrap interval, and agreement, as markdown."""

    out: list[str] = field(metadata={"help": "session folder(s) written by serve, one comparison each",
                                     **renamed("--input_dir", "--out")})
    bootstrap: int = field(default=2000, metadata={"help": "bootstrap resamples"})
    confidence: float = field(default=0.95, metadata={"help": "interval level"})
    seed: int = field(default=0, metadata={"help": "bootstrap seed"})
    output: str | None = field(default=None, metadata={"help": "also write the markdown here",
                                                       **renamed("--output_file", "--output")})
    json: str | None = field(default=None, metadata={"help": "write all numbers as JSON here"})


def main(argv: list[str] | None = None) -> int:
    examples = {"serve": "tarsier-side-by-side serve --results a.jsonl b.jsonl --videos clips/ --output_dir runs/sbs",
                "report": "tarsier-side-by-side report --input_dir runs/sbs --output_file table4.md"}
    parser = argparse.ArgumentParser(prog="tarsier-side-by-side", **help_text(
        "Blind A/B comparison of two models' descriptions (the paper's Table 4): serve the labelling page, then "
        "report who won.", *examples.values()))
    commands = parser.add_subparsers(dest="command", required=True, parser_class=HfArgumentParser)
    for name, cls in (("serve", ServeArgs), ("report", ReportArgs)):
        commands.add_parser(name, dataclass_types=cls, help=cls.__doc__, **help_text(cls.__doc__, examples[name]))
    namespace = vars(parser.parse_args(argv))
    command = namespace.pop("command")
    try:
        if command == "serve":
            args = ServeArgs(**namespace)
            if len(args.results) != 2:
                parser.error(f"--results takes the two models' result files, got {len(args.results)}")
            if args.frames < 1:
                parser.error("--frames must be at least 1")
            names = [name.strip() for name in args.annotators.split(",")] if args.annotators else None
            session = open_session(args.out, *args.results, args.videos, args.num, args.seed,
                                   args.name_1, args.name_2, names, args.overlap)
            serve(session, args.out, port=args.port, frames=args.frames, verbose=args.verbose)
        else:
            args = ReportArgs(**namespace)
            markdown, analyses = report(args.out, args.bootstrap, args.confidence, args.seed)
            sys.stdout.write(markdown)
            if args.output:
                Path(args.output).write_text(markdown, encoding="utf-8")
            if args.json:
                Path(args.json).write_text(json.dumps(analyses, indent=1) + "\n", encoding="utf-8")
    except (ResultsError, SessionError, LabelError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
