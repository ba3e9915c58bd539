"""`tarsier-serve` requests per second on CPU: the same requests sent one at a time vs by 4 concurrent clients.

    python benchmarks/bench_serve_batching.py                       # 32 requests, prints a Markdown table
    python benchmarks/bench_serve_batching.py --requests 16 --json out.json

The model is the serving tests' tiny Tarsier (a 2-layer llama of hidden size 64 with the SmolLM2 vocabulary, a
2-layer CLIP at 28 px), saved and served by the real server (`python -m tarsier_hf.inference.serve`) on 127.0.0.1.
Every request asks about one of four colour clips (8 frames) with one of two prompts, greedily, for `--max_tokens`
tokens. Rows, each against a fresh server:

* `one at a time` (the baseline): one client sends the requests in turn;
* `4 clients, no batching`: `--max_batch_size 1`, the server as it was before batching (one `generate` per
  request, up to 4 side by side on threads);
* `4 clients, batched`: the default scheduler (`--batch_window_ms`, `--max_batch_size`).

Each row runs once after one warm-up request; the table reports requests/s and the ratio to the baseline. The
answers of every row must equal the baseline's.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import tempfile
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.colour_clips import write_colour_clips  # noqa: E402 - after the repository is on the path
from tests import test_serving as serving_tests  # noqa: E402

NAME = "tiny-tarsier"
PROMPTS = ("Describe the video.", "Describe the video in detail: the colours, what moves, and how the camera moves.")


def build_tiny_tarsier(root: Path) -> Path:
    """The serving tests' tiny Tarsier (`tests/conftest.py`: `parts_dir`, `tiny_tarsier`), saved under `root`."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tarsier_hf.tiny_recipe.local_llm import materialize_smollm2
    from tarsier_hf.training.model_builder import build_from_parts, save_tarsier

    tokenizer = AutoTokenizer.from_pretrained(materialize_smollm2())
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    vision = {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 2, "image_size": 28, "patch_size": 14}
    (root / "vision.json").write_text(json.dumps(vision))
    torch.manual_seed(0)
    model, processor = build_from_parts(str(root / "vision.json"), str(root / "llm"), chat_template="chatml")
    save_tarsier(model, processor, root / "tarsier")
    return root / "tarsier"


def start_server(folder: Path, media: Path, extra: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    """The served tiny Tarsier, started as the serving tests start theirs (one intra-op thread, offline)."""
    return serving_tests.start_server(
        ["--model_name_or_path", str(folder), "--trust_remote_code", "--served_model_name", NAME, "--device", "cpu",
         "--allowed_local_media_path", str(media), "--log_level", "warning", *extra], log)


def post(url: str, body: dict) -> dict:
    parsed = urllib.parse.urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=600)
    try:
        connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"{response.status}: {answer}")
        return answer
    finally:
        connection.close()


def measure(url: str, bodies: list[dict], clients: int) -> tuple[float, list[str], int]:
    """`(seconds, answers in request order, completion tokens)` of sending `bodies` with `clients` threads."""
    post(url, bodies[0])  # warm-up
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(lambda body: post(url, body), bodies))
    seconds = time.perf_counter() - start
    return (seconds, [a["choices"][0]["message"]["content"] for a in answers],
            sum(a["usage"]["completion_tokens"] for a in answers))


@dataclass
class BenchArgs:
    requests: int = field(default=32, metadata={"help": "requests per row"})
    clients: int = field(default=4, metadata={"help": "concurrent clients of the concurrent rows"})
    max_tokens: int = field(default=32, metadata={"help": "max_tokens of every request"})
    batched_flags: str = field(default="", metadata={
        "help": "extra server flags of the batched row, e.g. \"--batch_window_ms 20 --max_concurrent_generations 2\""})
    json: str | None = field(default=None, metadata={"help": "also write the result here"})


def main(argv=None) -> dict:
    (args,) = HfArgumentParser(BenchArgs, description=__doc__.split("\n\n")[0]).parse_args_into_dataclasses(argv)
    root = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    media = write_colour_clips(root) / "videos"
    folder = build_tiny_tarsier(root)
    colours = ("red", "green", "blue", "white")
    contents = [[{"type": "video_url", "video_url": {"url": str(media / f"{colours[i % 4]}.mp4")}},
                 {"type": "text", "text": PROMPTS[i // 4 % 2]}] for i in range(args.requests)]
    bodies = [{"model": NAME, "max_tokens": args.max_tokens, "temperature": 0,
               "messages": [{"role": "user", "content": content}]} for content in contents]
    configurations = [("one at a time (baseline)", 1, []),
                      (f"{args.clients} clients, no batching (--max_batch_size 1)", args.clients,
                       ["--max_batch_size", "1", "--max_n", "1"]),
                      (f"{args.clients} clients, batched {args.batched_flags}".rstrip(), args.clients,
                       args.batched_flags.split())]
    rows = []
    for name, clients, extra in configurations:
        server, url = start_server(folder, media, extra, root / f"serve_{len(rows)}.log")
        try:
            rows.append((name, *measure(url, bodies, clients)))
        finally:
            server.terminate()
            server.wait(30)
    baseline_s, baseline_answers = rows[0][1], rows[0][2]
    identical = all(answers == baseline_answers for _, _, answers, _ in rows)
    print(f"{args.requests} requests (8 frames, greedy, max_tokens {args.max_tokens}), tiny Tarsier, CPU, "
          f"server threads 1 (OMP_NUM_THREADS=1)")
    print("| clients | requests/s | completion tokens/s | vs one at a time |\n|---|---|---|---|")
    for name, seconds, _, tokens in rows:
        print(f"| {name} | {args.requests / seconds:.2f} | {tokens / seconds:.0f} | {baseline_s / seconds:.2f}x |")
    print(f"answers identical to one at a time: {identical}")
    result = {"requests": args.requests, "max_tokens": args.max_tokens, "identical": identical,
              "rows": [{"name": name, "seconds": seconds, "requests_per_s": args.requests / seconds,
                        "completion_tokens": tokens, "ratio": baseline_s / seconds}
                       for name, seconds, _, tokens in rows]}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
