"""`python -m tarsier_hf.inference.serve` / `tarsier-serve`: the command line (`ServeArguments`) that loads the
`Engine` and runs the application on uvicorn."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from tarsier_hf.cli import consent_boundary, help_text, take_positional
from tarsier_hf.inference.serve.app import create_app
from tarsier_hf.inference.serve.engine import Engine
from tarsier_hf.inference.serve.protocol import ServeLimits

logger = logging.getLogger(__name__)


@dataclass
class ServeArguments:
    """Command-line arguments of `python -m tarsier_hf.inference.serve`."""

    model_name_or_path: str | None = field(default=None, metadata={
        "help": "Checkpoint folder or Hub id: a Tarsier, a Tarsier2 (Qwen2-VL) or any causal LM (required; formerly "
                "the positional MODEL)."})
    host: str = field(default="127.0.0.1", metadata={"help": "Listen address."})
    port: int = field(default=8000, metadata={"help": "Listen port."})
    served_model_name: str | None = field(default=None, metadata={"help": "Name requests use (default: the model path)."})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "Run the checkpoint's own code files instead of this repository's classes."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, ..."})
    dtype: str = field(default="auto", metadata={"help": "auto (the checkpoint's), float32, bfloat16, float16."})
    max_new_tokens: int = field(default=512, metadata={"help": "Default when a request has no max_tokens."})
    allowed_local_media_path: str | None = field(
        default=None, metadata={"help": "Folder whose files requests may name by path or file:// URL."})
    max_request_mb: float = field(default=256, metadata={
        "help": "Largest request body (data: URIs included), however it is sent (chunked too)."})
    max_concurrent_generations: int = field(default=4, metadata={
        "help": "Batches that generate at once, each on its own thread; more wait for a free one."})
    max_tokens: int = field(default=ServeLimits.max_tokens, metadata={"help": "Largest max_tokens a request may ask."})
    max_stop_strings: int = field(default=ServeLimits.max_stop_strings, metadata={"help": "Most stop strings."})
    max_stop_length: int = field(default=ServeLimits.max_stop_length, metadata={
        "help": "Longest stop string (characters)."})
    max_frames_per_video: int = field(default=ServeLimits.max_frames_per_video, metadata={
        "help": "Most frames a video may be sampled to."})
    max_frames_per_request: int = field(default=ServeLimits.max_frames_per_request, metadata={
        "help": "Most frames over a request's videos and images (an image is one frame)."})
    max_frame_pixels: int = field(default=ServeLimits.max_frame_pixels, metadata={
        "help": "Largest width x height of a decoded frame or image (default 8K)."})
    max_request_pixels: int = field(default=ServeLimits.max_request_pixels, metadata={
        "help": "Most pixels a request may decode, over all its frames (frames decoded to reach a sampled one too)."})
    max_prompt_tokens: int = field(default=ServeLimits.max_prompt_tokens, metadata={
        "help": "Longest prompt in tokens (text and frames)."})
    max_n: int = field(default=ServeLimits.max_n, metadata={
        "help": "Most answers (n) one request may ask; at most --max_batch_size."})
    max_batch_size: int = field(default=8, metadata={
        "help": "Most rows (a request's n answers are n rows) generated together in one batch."})
    batch_window_ms: float = field(default=20.0, metadata={
        "help": "Longest a request waits for requests still being read, to batch with them (milliseconds)."})
    log_level: str = field(default="info", metadata={"help": "uvicorn log level."})


@consent_boundary
def main(argv: list[str] | None = None) -> None:
    import uvicorn  # optional: the `serve` extra

    parser = HfArgumentParser(ServeArguments, **help_text(
        "Serve a Tarsier, a Tarsier2 or any causal LM checkpoint on the OpenAI chat-completions API.",
        "tarsier-serve --model_name_or_path tarsier-7b --port 8000 --allowed_local_media_path clips/",
        usage="%(prog)s --model_name_or_path MODEL [--host HOST] [--port PORT] [options]"))
    parser.add_argument("model", nargs="?", help=argparse.SUPPRESS)  # the positional form, deprecated
    args, positional = parser.parse_args_into_dataclasses(args=argv)
    model = take_positional(parser, args.model_name_or_path, positional.model, "--model_name_or_path")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    limits = ServeLimits(**{name: getattr(args, name) for name in ServeLimits.__dataclass_fields__})
    engine = Engine(model, args.served_model_name, args.device, args.dtype, args.trust_remote_code,
                    args.max_new_tokens, args.allowed_local_media_path, limits, args.max_concurrent_generations,
                    args.max_batch_size, args.batch_window_ms)
    logger.info("serving %s (%s) on http://%s:%d/v1", engine.name,
                "video/image/text" if engine.multimodal else "text", args.host, args.port)
    uvicorn.run(create_app(engine, int(args.max_request_mb * 2**20)), host=args.host, port=args.port,
                log_level=args.log_level)


if __name__ == "__main__":
    main()
