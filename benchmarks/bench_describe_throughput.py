"""Batch description throughput on CPU: `tarsier_hf.inference.batch.run_inference` vs a plain loop over LLaVA-NeXT-Video.

    python benchmarks/bench_describe_throughput.py                    # 32 clips, prints a Markdown table
    python benchmarks/bench_describe_throughput.py --videos 8 --json out.json

Both sides get the same model sizes (CLIP 2 x 64 at 112 px -> 8 x 8 patches, a 2-layer MLP projector, a llama
`--layers` x `--hidden` LLM with the SmolLM2 vocabulary), the same 8 frames per clip decoded by the same PyAV
reader and resized by the same CLIP image processor, and the same number of LM positions: Tarsier's frames take
`8 x (8 + 1) + 1 = 73` positions each, LLaVA-NeXT-Video (`spatial_pool_stride=1`) 64, so its prompt gets 9 more text
tokens per frame. Both decode greedily for `--new_tokens` tokens (`min_new_tokens` too, so no row stops early).

* `plain loop`: per clip, decode -> preprocess -> `generate` at batch 1 (what a user writes around the model);
* `ours, batch 1, 0 workers`: `run_inference` without batching or workers (the reference outputs);
* `ours, batch B, 0 workers`: batching and length sorting alone;
* `ours, batch B, W workers`: requests sorted by prompt length, `W` DataLoader workers decoding ahead of
  generation, results streamed to JSONL. The batched predictions must equal the batch-1 ones.

Half of the clips get a longer prompt, so batching by prompt length matters. Each configuration runs once after a
one-clip warm-up; the table reports videos/s and the speed-up over the plain loop.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


import torch
from transformers import GenerationConfig, HfArgumentParser

from tarsier_hf.inference.batch import run_inference
from tarsier_hf.inference.engine import InferenceSettings, VideoRequest, VideoTextGenerator
from tarsier_hf.tiny_recipe.local_llm import materialize_smollm2
from tarsier_hf.training.model_builder import build_from_parts
from frame_sampling_tarsier import UniformSampling
from media_loading_tarsier import load_video

from bench_training import make_videos  # a sibling script (benchmarks/ is on sys.path when a script runs)

FRAMES = 8
PROMPTS = ("Describe the video in detail.",
           "Describe the video in detail: the objects, their colours, how they move, and how the camera moves.")


def build_tarsier(root: Path, layers: int, hidden: int):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(materialize_smollm2())
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 3,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                         tie_word_embeddings=True, max_position_embeddings=4096)
    LlamaForCausalLM(config).save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    vision = {"model_type": "clip_vision_model", "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 112, "patch_size": 14}
    (root / "vision.json").write_text(json.dumps(vision))
    model, processor = build_from_parts(str(root / "vision.json"), str(root / "llm"), chat_template="chatml")
    return model.eval(), processor


def build_llava(tarsier):
    """LLaVA-NeXT-Video with Tarsier's vision / text configs (random weights; same sizes, same positions)."""
    from transformers import LlavaNextVideoConfig, LlavaNextVideoForConditionalGeneration

    text = tarsier.config.text_config.to_dict()
    vocab = text["vocab_size"]
    config = LlavaNextVideoConfig(
        vision_config=tarsier.config.vision_config.to_dict(), text_config=text, video_token_index=vocab - 1,
        image_token_index=vocab - 2, spatial_pool_stride=1, vision_feature_layer=-2,
        vision_feature_select_strategy="default", tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return LlavaNextVideoForConditionalGeneration(config).eval()


def plain_loop(llava, processor, requests, ours_length, new_tokens) -> list[str]:
    """Per clip: PyAV decode, CLIP preprocessing, hand-built ids with the same LM length as ours, generate."""
    tokenizer = processor.tokenizer
    config = llava.config
    rows = config.vision_config.image_size // config.vision_config.patch_size
    texts = []
    for request in requests:
        frames = load_video(request.video, UniformSampling(FRAMES)).frames
        pixels = processor.image_processor(images=list(frames), return_tensors="pt")["pixel_values"]
        prompt = tokenizer(request.prompt, add_special_tokens=False)["input_ids"]
        video = [config.video_token_index] * (FRAMES * rows * rows)
        filler = [tokenizer.pad_token_id or 0] * (ours_length[request.id] - len(video) - len(prompt))
        ids = torch.tensor([filler[:4] + video + filler[4:] + prompt])
        with torch.inference_mode():
            out = llava.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 pixel_values_videos=pixels.unsqueeze(0), max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        texts.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return texts


@dataclass
class BenchArgs:
    videos: int = field(default=32, metadata={"help": "generated clips to describe"})
    batch_size: int = 8
    workers: int = field(default=2, metadata={"help": "DataLoader workers decoding ahead of generation"})
    layers: int = field(default=4, metadata={"help": "llama layers"})
    hidden: int = field(default=256, metadata={"help": "llama hidden size"})
    new_tokens: int = 32
    threads: int = field(default=1, metadata={
        "help": "torch threads of the generating process (on a busy 2-core machine 2 threads ran 25x slower than 1: "
                "the threads wait on each other)"})
    json: str | None = field(default=None, metadata={"help": "also write the result here"})


def main(argv=None) -> dict:
    (args,) = HfArgumentParser(BenchArgs, description=__doc__.split("\n\n")[0]).parse_args_into_dataclasses(argv)
    torch.set_num_threads(args.threads)

    root = Path(tempfile.mkdtemp(prefix="bench_describe_"))
    make_videos(root / "data", args.videos + 1, seconds=3.0, size=(240, 320))
    clips = [str(root / "data" / "videos" / f"v{i}.mp4") for i in range(args.videos + 1)]
    requests = [VideoRequest(f"v{i}", clip, PROMPTS[i % 2]) for i, clip in enumerate(clips)]
    warmup, requests = requests[:1], requests[1:]
    model, processor = build_tarsier(root, args.layers, args.hidden)
    llava = build_llava(model)
    settings = InferenceSettings(checkpoint="bench", frame_sampling=UniformSampling(FRAMES), generation=GenerationConfig(
        max_new_tokens=args.new_tokens, do_sample=False))
    generator = VideoTextGenerator(model, processor, settings)
    ours_length = {r.id: len(generator.encode(r)["input_ids"]) for r in warmup + requests}
    # generate exactly --new_tokens tokens on our side too
    model.generation_config.min_new_tokens = args.new_tokens

    def ours(batch_size, workers, name):
        output = root / f"{name}.jsonl"
        run_inference(warmup, root / f"{name}_warmup.jsonl", settings, batch_size=1, model=model,
                      processor=processor, progress=False, num_workers=0)
        start = time.perf_counter()
        records = run_inference(requests, output, settings, batch_size=batch_size, model=model,
                                processor=processor, progress=False, num_workers=workers)
        return time.perf_counter() - start, {k: r["prediction"] for k, r in records.items()}

    plain_loop(llava, processor, warmup, ours_length, args.new_tokens)
    start = time.perf_counter()
    plain_texts = plain_loop(llava, processor, requests, ours_length, args.new_tokens)
    plain_s = time.perf_counter() - start
    single_s, single = ours(1, 0, "ours_b1")
    no_workers_s, no_workers = ours(args.batch_size, 0, "ours_batched_no_workers")
    batched_s, batched = ours(args.batch_size, args.workers, "ours_batched")

    n = len(requests)
    identical = batched == single == no_workers
    rows = [
        ("plain loop, LlavaNextVideoForConditionalGeneration", plain_s),
        ("ours, batch 1, 0 workers", single_s),
        (f"ours, batch {args.batch_size}, 0 workers, length-sorted", no_workers_s),
        (f"ours, batch {args.batch_size}, {args.workers} workers, length-sorted", batched_s),
    ]
    print(f"{n} clips, {FRAMES} frames, {min(ours_length.values())}-{max(ours_length.values())} LM positions, "
          f"{args.new_tokens} new tokens, llama {args.layers} x {args.hidden}, torch threads {torch.get_num_threads()}")
    print("| pipeline | videos/s | vs plain loop |\n|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {n / seconds:.2f} | {plain_s / seconds:.2f}x |")
    print(f"batched predictions identical to batch 1: {identical} ({sum(batched[k] == single[k] for k in single)}/{n})")
    assert len(plain_texts) == n
    result = {"videos": n, "plain_s": plain_s, "ours_b1_s": single_s, "ours_batched_no_workers_s": no_workers_s,
              "ours_batched_s": batched_s,
              "speedup": plain_s / batched_s, "identical": identical,
              "positions": sorted(set(ours_length.values()))}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
