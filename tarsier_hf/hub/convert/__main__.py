"""`tarsier-convert` (`tarsier-convert` (`python -m tarsier_hf.hub.convert`)): a released Tarsier or Tarsier2 checkpoint folder into this
repository's format, and back with `--export`.

    # Tarsier-7b / Tarsier-34b <-> our Tarsier folder (tarsier.py)
    tarsier-convert --model_name_or_path Tarsier-7b --output_dir tarsier-7b-hf
    tarsier-convert --model_name_or_path tarsier-7b-hf --output_dir Tarsier-7b-released --export
    # Tarsier2 <-> a standard Qwen2-VL folder (tarsier2.py)
    tarsier-convert --model_name_or_path Tarsier2-Recap-7b --output_dir tarsier2-recap-7b-hf

`main` tells the families apart from the input's config.json (`tarsier2.handles`); the flags are the same.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from tarsier_hf.cli import help_text, renamed
from tarsier_hf.hub.checkpoint import CheckpointError
from tarsier_hf.hub.convert import tarsier2
from tarsier_hf.hub.convert.tarsier import convert_released, export_released

logger = logging.getLogger(__name__)


@dataclass
class ConvertArguments:
    """Command-line arguments of `tarsier-convert` (`python -m tarsier_hf.hub.convert`)."""

    input: str = field(metadata={"help": "Checkpoint folder: the released layout (or ours with --export).",
                                 **renamed("--model_name_or_path", "--input")})
    output: str = field(metadata={"help": "Destination folder (created; must be empty unless --overwrite).",
                                  **renamed("--output_dir", "--output")})
    export: bool = field(default=False, metadata={"help": "Convert our format back to the released layout."})
    chat_template: str = field(
        default="auto",
        metadata={"help": "Released chat format: 'vicuna' (Tarsier-7b/13b), 'yi' (Tarsier-34b) or 'auto' (from "
                  "the tokenizer's eos/bos tokens)."},
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty output folder."})


def main(argv: list[str] | None = None) -> int:
    parser = HfArgumentParser(ConvertArguments, **help_text(
        "Convert a released Tarsier or Tarsier2 checkpoint folder into this repository's format (or back with "
        "--export).",
        "tarsier-convert --model_name_or_path Tarsier-7b --output_dir tarsier-7b-hf",
        usage="%(prog)s --model_name_or_path FOLDER --output_dir FOLDER [--export] [--overwrite] [options]"))
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if tarsier2.handles(args.input, export=args.export):
            output = tarsier2.run(args.input, args.output, export=args.export, chat_template=args.chat_template,
                                  overwrite=args.overwrite)
        elif args.export:
            output = export_released(args.input, args.output, overwrite=args.overwrite)
        else:
            output = convert_released(args.input, args.output, chat_template=args.chat_template,
                                      overwrite=args.overwrite)
    except CheckpointError as error:
        raise SystemExit(f"error: {error}") from None
    logger.info("wrote %s", output)
    return 0


if __name__ == "__main__":
    main()
