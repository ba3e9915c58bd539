"""Tarsier vs transformers' LLaVA: prefill + greedy decoding time and peak memory on CPU, same sizes.

Both models get a CLIP vision tower, a 2-layer MLP projector and a llama LLM of identical sizes, 8 frames
(LLaVA: 8 images) and the same number of LM positions:

* `separators=off`: Tarsier without frame separators has exactly LLaVA's `rows * cols` positions per frame;
* `separators=on`: Tarsier's released layout adds `rows + 1` positions per frame; LLaVA's prompt gets as many
  extra text tokens so that both LLMs process the same sequence length.

Each measurement runs in a fresh subprocess (so peak RSS is per run), alternating the two implementations.

    python benchmarks/bench_model.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

from transformers import HfArgumentParser


VISION = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4, image_size=224,
              patch_size=14)
TEXT = dict(model_type="llama", hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
            num_key_value_heads=8, vocab_size=32064, max_position_embeddings=8192)
FRAMES, PROMPT_TOKENS, NEW_TOKENS = 8, 32, 32
IMAGE, NEWLINE, FRAME_END = 32000, 32002, 32003


def build(impl: str, separators: bool):
    """Return `(model, inputs)` for one implementation with seeded random weights."""
    import torch

    torch.manual_seed(0)
    rows = VISION["image_size"] // VISION["patch_size"]
    prompt = list(range(1, PROMPT_TOKENS + 1))
    if impl == "tarsier":
        from configuration_tarsier import TarsierConfig
        from modeling_tarsier import TarsierForConditionalGeneration

        config = TarsierConfig(vision_config=dict(model_type="clip_vision_model", **VISION), text_config=TEXT,
                               use_frame_separators=separators)
        model = TarsierForConditionalGeneration(config)
        frame = ([IMAGE] * rows + [NEWLINE]) * rows + [FRAME_END] if separators else [IMAGE] * rows * rows
        ids = prompt[:1] + frame * FRAMES + prompt[1:]
        extra = {"num_frames": torch.tensor([FRAMES])}
    else:
        from transformers import LlavaConfig, LlavaForConditionalGeneration

        config = LlavaConfig(vision_config=dict(model_type="clip_vision_model", **VISION), text_config=TEXT,
                             image_token_index=IMAGE, image_seq_length=rows * rows)
        model = LlavaForConditionalGeneration(config)
        padding = list(range(100, 100 + (rows + 1) * FRAMES)) if separators else []
        ids = prompt[:1] + [IMAGE] * rows * rows * FRAMES + padding + prompt[1:]
        extra = {}
    model.eval()
    inputs = dict(input_ids=torch.tensor([ids]), pixel_values=torch.randn(FRAMES, 3, VISION["image_size"],
                                                                          VISION["image_size"]), **extra)
    return model, inputs


def run_once(impl: str, separators: bool) -> dict:
    import torch

    torch.set_num_threads(2)
    model, inputs = build(impl, separators)
    with torch.inference_mode():
        model.generate(**inputs, max_new_tokens=2, do_sample=False, eos_token_id=None)  # warm-up
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                             eos_token_id=None)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_mib": rss_before / 1024, "positions": inputs["input_ids"].shape[1],
            "generated": out.shape[1] - inputs["input_ids"].shape[1]}


@dataclass
class BenchArgs:
    repeats: int = field(default=5, metadata={"help": "fresh processes per implementation (median reported)"})
    child: list[str] | None = field(default=None, metadata={"help": argparse.SUPPRESS})  # IMPL SEPARATORS, internal


def main():
    (args,) = HfArgumentParser(BenchArgs, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
                               ).parse_args_into_dataclasses()
    if args.child:
        print(json.dumps(run_once(args.child[0], args.child[1] == "on")))
        return

    rows = []
    for separators in ("off", "on"):
        results = {"tarsier": [], "llava": []}
        for repeat in range(args.repeats):
            order = ("tarsier", "llava") if repeat % 2 == 0 else ("llava", "tarsier")
            for impl in order:
                out = subprocess.run([sys.executable, __file__, "--child", impl, separators], check=True,
                                     capture_output=True, text=True).stdout
                results[impl].append(json.loads(out.strip().splitlines()[-1]))
        tarsier, llava = results["tarsier"], results["llava"]
        assert tarsier[0]["positions"] == llava[0]["positions"], (tarsier[0], llava[0])
        t_time = statistics.median(r["seconds"] for r in tarsier)
        l_time = statistics.median(r["seconds"] for r in llava)
        t_mem = statistics.median(r["peak_rss_mib"] for r in tarsier)
        l_mem = statistics.median(r["peak_rss_mib"] for r in llava)
        rows.append((separators, tarsier[0]["positions"], t_time, l_time, t_mem, l_mem))

    print(f"\n{FRAMES} frames, prefill + {NEW_TOKENS} greedy tokens, median of {args.repeats} fresh processes, "
          "2 threads\n")
    print("| frame separators | LM positions | Tarsier s | LLaVA s | time ratio | Tarsier peak RSS MiB | "
          "LLaVA peak RSS MiB | memory ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for separators, positions, t_time, l_time, t_mem, l_mem in rows:
        print(f"| {separators} | {positions} | {t_time:.2f} | {l_time:.2f} | {t_time / l_time:.3f} | {t_mem:.0f} | "
              f"{l_mem:.0f} | {t_mem / l_mem:.3f} |")


if __name__ == "__main__":
    main()
