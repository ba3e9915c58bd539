"""Training throughput on CPU: the data pipeline alone, the model step alone, and both through TarsierSFTTrainer.

    python benchmarks/bench_training.py            # default small config, prints a markdown table
    python benchmarks/bench_training.py --steps 4 --videos 8   # quicker

Side by side:
- data pipeline (`ConversationDataset` + `TarsierVideoCollator`: PyAV decode, frame sampling, resize/normalise,
  tokenise, expand) in a DataLoader with 0 and with 2 workers: videos/s;
- model step alone (forward + backward + AdamW on batches collated in advance): samples/s, tokens/s;
- the real `TarsierSFTTrainer` with 2 DataLoader workers: samples/s, tokens/s.
The goal is pipeline videos/s (2 workers) > model samples/s (one video per sample), so data never stalls a step.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


import numpy as np
import torch
from transformers import HfArgumentParser

from tarsier_hf.dream_s.video_writer import write_video
from tarsier_hf.tiny_recipe.local_llm import materialize_smollm2
from tarsier_hf.training.collator import TarsierVideoCollator
from tarsier_hf.training.conversation_dataset import ConversationDataset
from tarsier_hf.training.dataset_spec import DatasetSpec
from tarsier_hf.training.freezing import set_trainable_parts
from tarsier_hf.training.model_builder import build_from_parts
from tarsier_hf.training.trainer import TarsierSFTTrainer
from frame_sampling_tarsier import RandomSegmentsSampling


def make_videos(root: Path, count: int, seconds: float, size: tuple[int, int]) -> Path:
    """`count` H.264 clips (moving gradient, 30 fps) and a JSONL of caption rows; returns the JSONL path."""
    (root / "videos").mkdir(parents=True, exist_ok=True)
    height, width = size
    frames_per_video = int(seconds * 30)
    rows = []
    ys, xs = np.mgrid[0:height, 0:width]
    for i in range(count):
        frames = []
        for t in range(frames_per_video):
            frame = np.zeros((height, width, 3), np.uint8)
            frame[..., 0] = (xs + 4 * t + 17 * i) % 256
            frame[..., 1] = (ys + 2 * t) % 256
            frame[..., 2] = (xs + ys + 40 * i) % 256
            frames.append(frame)
        write_video(root / "videos" / f"v{i}.mp4", frames, fps=30)
        rows.append({"messages": [
            {"role": "user", "content": [{"type": "video", "path": f"videos/v{i}.mp4"},
                                         {"type": "text", "text": "Describe the video in detail."}]},
            {"role": "assistant", "content": [{"type": "text", "text": f"Colour bands drift to the left in clip {i}, "
                                                                       "while a second gradient moves down."}]}],
            "task": "caption_detailed", "source": "bench", "idx": i})
    path = root / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build_model(root: Path, image_size: int, hidden: int, layers: int):
    """A small Tarsier: llama (`layers` x `hidden`) with the SmolLM2 tokenizer + a 2-layer CLIP at `image_size`."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(materialize_smollm2())
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    vision = {"model_type": "clip_vision_model", "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": image_size, "patch_size": 14}
    (root / "vision.json").write_text(json.dumps(vision))
    return build_from_parts(str(root / "vision.json"), str(root / "llm"), chat_template="chatml")


def bench_pipeline(dataset, collator, workers: int, batch_size: int, batches: int) -> float:
    """Videos per second through a DataLoader (after one warm-up batch per worker)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         collate_fn=collator, persistent_workers=workers > 0,
                                         prefetch_factor=2 if workers else None)
    iterator = iter(loader)
    for _ in range(max(1, workers)):
        next(iterator)
    start = time.perf_counter()
    videos = 0
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            batch = next(iterator)
        videos += batch["input_ids"].shape[0]
    return videos / (time.perf_counter() - start)


def bench_model(model, batches: list[dict], steps: int) -> tuple[float, float]:
    """(samples/s, tokens/s) of forward + backward + AdamW on pre-collated batches."""
    model.train()
    set_trainable_parts(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-5, eps=1e-6)
    inputs = [{k: v for k, v in b.items() if not k.startswith("skipped")} for b in batches]
    model(**inputs[0]).loss.backward()  # warm-up
    optimizer.zero_grad()
    samples = tokens = 0
    start = time.perf_counter()
    for step in range(steps):
        batch = inputs[step % len(inputs)]
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        samples += batch["input_ids"].shape[0]
        tokens += int(batch["attention_mask"].sum())
    elapsed = time.perf_counter() - start
    return samples / elapsed, tokens / elapsed


def bench_trainer(model, processor, dataset, collator, steps: int, batch_size: int, output_dir: str):
    """(samples/s, tokens/s) of the real TarsierSFTTrainer with 2 DataLoader workers."""
    from trl import SFTConfig

    args = SFTConfig(output_dir=output_dir, max_steps=steps, per_device_train_batch_size=batch_size,
                     learning_rate=2e-5, bf16=False, use_cpu=True, report_to=[], logging_steps=steps,
                     save_strategy="no", dataloader_num_workers=2, remove_unused_columns=False,
                     dataset_kwargs={"skip_prepare_dataset": True}, gradient_checkpointing=False,
                     disable_tqdm=True)
    trainer = TarsierSFTTrainer(model=model, args=args, train_dataset=dataset.as_hf_dataset(),
                                data_collator=collator, processing_class=processor)
    result = trainer.train()
    runtime = result.metrics["train_runtime"]
    return result.metrics["train_samples_per_second"], trainer._total_train_tokens / runtime



@dataclass
class BenchArgs:
    videos: int = field(default=8, metadata={"help": "generated clips"})
    seconds: float = field(default=4.0, metadata={"help": "clip length (30 fps)"})
    video_size: list[int] = field(default_factory=lambda: [240, 320], metadata={"help": "clip height and width"})
    image_size: int = field(default=112, metadata={"help": "vision input size (patch 14)"})
    frames: list[int] = field(default_factory=lambda: [8, 16], metadata={"help": "random_segments range"})
    hidden: int = 128
    layers: int = 2
    batch_size: int = 2
    steps: int = 6

def main() -> None:
    (args,) = HfArgumentParser(BenchArgs, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
                               ).parse_args_into_dataclasses()
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        jsonl = make_videos(root, args.videos, args.seconds, tuple(args.video_size))
        model, processor = build_model(root, args.image_size, args.hidden, args.layers)
        dataset = ConversationDataset([DatasetSpec(str(jsonl), str(root))])
        sampling = RandomSegmentsSampling(tuple(args.frames) if len(args.frames) > 1 else args.frames[0])
        collator = TarsierVideoCollator(processor, sampling, dataset=dataset)

        pipe0 = bench_pipeline(dataset, collator, 0, args.batch_size, args.steps)
        pipe2 = bench_pipeline(dataset, collator, 2, args.batch_size, args.steps)
        batches = [collator([dataset[i] for i in range(j, j + args.batch_size)])
                   for j in range(0, min(len(dataset), 4 * args.batch_size), args.batch_size)]
        model_sps, model_tps = bench_model(model, batches, args.steps)
        trainer_sps, trainer_tps = bench_trainer(model, processor, dataset, collator, args.steps, args.batch_size,
                                                 str(root / "run"))

    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"\nConfig: {args.videos} clips {args.video_size[1]}x{args.video_size[0]} {args.seconds:g}s 30fps H.264; "
          f"frames random_segments {args.frames}; vision {args.image_size}px/14 "
          f"({processor.tokens_per_frame} positions/frame); llama {args.layers}x{args.hidden} "
          f"({params:.1f}M params); batch {args.batch_size}; {args.steps} steps; torch threads {torch.get_num_threads()}"
          f"; CPUs {os.cpu_count()}\n")
    print("| stage | videos/s | samples/s | tokens/s |")
    print("|---|---|---|---|")
    print(f"| data pipeline, 0 workers | {pipe0:.2f} | | |")
    print(f"| data pipeline, 2 workers | {pipe2:.2f} | | |")
    print(f"| model step only (fwd+bwd+AdamW) | | {model_sps:.2f} | {model_tps:.0f} |")
    print(f"| TarsierSFTTrainer, 2 workers | | {trainer_sps:.2f} | {trainer_tps:.0f} |")
    verdict = "faster" if pipe2 > model_sps else "SLOWER"
    print(f"\nPipeline (2 workers) {pipe2:.2f} videos/s vs model {model_sps:.2f} samples/s: the pipeline is "
          f"{verdict} than the model consumes ({pipe2 / model_sps:.1f}x).")


if __name__ == "__main__":
    main()
