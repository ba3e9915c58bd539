"""Sweep the tiny recipe's learning dynamics: which settings let a from-scratch vision tower teach the LLM anything.

Each configuration builds the tiny Tarsier from the same parts as `recipes/tiny` (a CLIP tower from random weights,
a fresh projector, SmolLM2-135M-Instruct cut to its first layers), trains it in a plain PyTorch loop with the loss of
`--loss_head plain`, on DREAM-S clips rendered in memory (no video encoding or decoding, so a GPU is not starved by
data), and reports what `tarsier_hf.tiny_recipe` reports: the closed-grammar event F1 of greedy descriptions of the test
split, and the reference loss with each clip's own video vs another clip's video, per word class
(`tarsier_hf.eval.reference_loss`). It is the research tool behind the recipe's settings (docs/tiny_recipe.md); the recipe itself
always trains through `train_sft.py`.

    python -m tarsier_hf.tiny_recipe.sweep --configs sweep.jsonl --output results.jsonl --device cuda

`--configs` holds one JSON object per line with `SweepConfig` fields (and a `tag`); results are appended to
`--output`, and configurations whose tag is already there are skipped, so an interrupted sweep resumes.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from frame_sampling_tarsier import RandomSegmentsSampling, UniformSampling
from tarsier_hf.jsonl import read_jsonl_objects
from tarsier_hf.tiny_recipe.phases import TEST_PROMPT


@dataclass
class SweepConfig:
    """One trained-and-scored configuration (the defaults are the recipe's model at the 1e-3 learning rate of v1)."""

    tag: str = "default"
    seed: int = 0
    num_train: int = 300
    num_test: int = 60
    max_subjects: int = 3  # shapes per clip, 1-3 (the recipe: 3)
    max_events: int = 4  # events per clip, 1-4 (the recipe: 4)
    video_size: int = 32  # rendered frame side
    image_size: int | None = None  # vision tower input side (default: video_size)
    patch_size: int = 8
    vision_width: int = 128
    vision_layers: int = 2
    vision_heads: int = 2
    vision_feature_layer: int = -1
    use_frame_separators: bool = False
    llm_layers: int = 2
    stage1_steps: int = 150
    stage2_steps: int = 250
    batch_size: int = 8
    learning_rate: float = 1e-3
    vision_learning_rate: float | None = None  # vision tower + projector (default: learning_rate)
    llm_learning_rate: float | None = None  # decoder layers and norms (default: learning_rate)
    embedding_learning_rate: float | None = None  # embeddings / LM head; 0 freezes them (default: learning_rate)
    weight_decay: float = 0.0
    warmup_steps: int = 10
    max_grad_norm: float = 1.0
    num_frames: int = 8
    stage1_tasks: str = "caption,action,mcqa,qa,boxes"
    stage2_tasks: str = "describe_detailed,describe_short,describe_camera"
    max_new_tokens: int = 128
    eval_every: int = 0  # stage-2 steps between intermediate scores on the first 30 test clips (0: none)


@dataclass
class SweepArguments:
    configs: str = field(metadata={"help": "JSONL file of SweepConfig objects, or one JSON object."})
    output: str = field(metadata={"help": "JSONL file the results are appended to (done tags are skipped)."})
    parts_dir: str = field(default="runs/tiny_sweep/parts", metadata={"help": "Where the cut SmolLM2 folders go."})
    device: str = field(default="cuda" if torch.cuda.is_available() else "cpu", metadata={"help": "cpu or cuda."})
    data_workers: int = field(default=2, metadata={"help": "Processes rendering clips."})
    threads: int = field(default=0, metadata={"help": "torch threads per run (0: torch's default)."})


# -- data ---------------------------------------------------------------------------------------------------------


def _render_clip(job: tuple) -> tuple[str, np.ndarray, dict]:
    from tarsier_hf.dream_s.build import clip_rng
    from tarsier_hf.dream_s.render import compute_boxes, compute_tracks, render_frames
    from tarsier_hf.dream_s.scene import sample_clip
    from tarsier_hf.dream_s.tasks import stage1_rows, stage2_rows, test_row

    seed, split, index, size, heldout, max_subjects, max_events = job
    clip = sample_clip(clip_rng(seed, split, index), heldout, split, size=size, max_subjects=max_subjects,
                       max_events=max_events)
    tracks = compute_tracks(clip)
    frames = render_frames(clip, supersample=2, tracks=tracks)
    name = f"{split}/{index:06d}"
    rng = clip_rng(seed, split, index, stream=1)
    if split == "train":
        rows = {"stage1": stage1_rows(clip, rng, name, name, compute_boxes(clip, tracks=tracks)),
                "stage2": stage2_rows(clip, rng, name, name)}
    else:
        rows = {"test": [test_row(clip, name, name)]}
    return name, frames, rows


def stage1_sampling(config: SweepConfig) -> RandomSegmentsSampling:
    """Stage 1 of the recipe: one random frame from each of `num_frames` equal segments of the clip."""
    return RandomSegmentsSampling(config.num_frames)


def render_dataset(config: SweepConfig, workers: int) -> tuple[dict[str, np.ndarray], dict[str, list[dict]]]:
    """DREAM-S clips as in-memory frames `(16, S, S, 3)` keyed by clip name, and the stage-1/2/test rows."""
    from tarsier_hf.dream_s.scene import heldout_combinations

    heldout = heldout_combinations(config.seed, 0.1)
    shape = (config.video_size, heldout, config.max_subjects, config.max_events)
    jobs = [(config.seed, "train", i, *shape) for i in range(config.num_train)]
    jobs += [(config.seed, "test", i, *shape) for i in range(config.num_test)]
    if workers > 1:
        with get_context("spawn").Pool(workers) as pool:
            results = pool.map(_render_clip, jobs, chunksize=16)
    else:
        results = [_render_clip(job) for job in jobs]
    frames = {name: clip for name, clip, _ in results}
    rows: dict[str, list[dict]] = {"stage1": [], "stage2": [], "test": []}
    for _, _, clip_rows in results:
        for key, value in clip_rows.items():
            rows[key].extend(value)
    return frames, rows


def in_memory_collator(processor, frames: dict[str, np.ndarray]):
    """A `TarsierVideoCollator` reading each row's clip from `frames` (by its path) instead of a video file."""
    from tarsier_hf.training.collator import TarsierVideoCollator

    return TarsierVideoCollator(processor, videos=frames, max_length=2048, on_too_long="error", fail_fast=True)


# -- model and training ---------------------------------------------------------------------------------------------


def build_model(config: SweepConfig, language_model: str):
    from tarsier_hf.training.model_builder import build_from_parts

    vision = {"model_type": "clip_vision_model", "image_size": config.image_size or config.video_size,
              "patch_size": config.patch_size, "num_channels": 3, "hidden_size": config.vision_width,
              "intermediate_size": 4 * config.vision_width, "num_hidden_layers": config.vision_layers,
              "num_attention_heads": config.vision_heads, "hidden_act": "quick_gelu"}
    return build_from_parts(vision, language_model, chat_template="chatml",
                            use_frame_separators=config.use_frame_separators,
                            vision_feature_layer=config.vision_feature_layer)


def parameter_groups(model, config: SweepConfig) -> list[dict]:
    """AdamW groups: vision tower + projector, decoder layers, embeddings / LM head (rate 0 freezes a group)."""
    rates = {"vision": config.vision_learning_rate, "llm": config.llm_learning_rate,
             "embeddings": config.embedding_learning_rate}
    members: dict[str, list] = {key: [] for key in rates}
    seen = set()
    for name, param in model.named_parameters():  # named_parameters yields a tied weight once
        if id(param) in seen:
            continue
        seen.add(id(param))
        if "vision_tower" in name or "multi_modal_projector" in name:
            members["vision"].append(param)
        elif "embed_tokens" in name or "lm_head" in name:
            members["embeddings"].append(param)
        else:
            members["llm"].append(param)
    groups = []
    for key, params in members.items():
        rate = config.learning_rate if rates[key] is None else rates[key]
        if rate == 0:
            for param in params:
                param.requires_grad_(False)
        elif params:
            groups.append({"params": params, "lr": rate, "base_lr": rate})
    return groups


def plain_head_loss(model, batch: dict) -> torch.Tensor:
    """Mean next-token loss with the LM head applied only at labelled positions (`--loss_head plain`)."""
    from tarsier_hf.training.loss import labelled_logits

    logits, targets, _ = labelled_logits(model, batch, batch.pop("labels"))
    return F.cross_entropy(logits.float(), targets)


def train_stage(model, collator, rows, steps, sampling, config: SweepConfig, device, rng, on_step=None) -> list:
    collator.frame_sampling = sampling
    groups = parameter_groups(model, config)
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    model.train()
    order: list[int] = []
    losses = []
    for step in range(steps):
        if len(order) < config.batch_size:
            order.extend(rng.permutation(len(rows)).tolist())
        batch = collator([rows[order.pop()] for _ in range(config.batch_size)])
        batch = {k: v.to(device) for k, v in batch.items() if k not in ("skipped_samples", "skipped_too_long")}
        scale = min(1.0, (step + 1) / config.warmup_steps) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * scale
        loss = plain_head_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], config.max_grad_norm)
        optimizer.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step + 1)
    return losses


# -- scoring --------------------------------------------------------------------------------------------------------


def describe(model, processor, frames, rows, config: SweepConfig) -> list[str]:
    """Greedy detailed descriptions of test clips, batched as `tarsier_hf.inference.batch` batches them."""
    from transformers import GenerationConfig

    from tarsier_hf.inference.engine import InferenceSettings, VideoRequest, VideoTextGenerator

    generator = VideoTextGenerator(model, processor, InferenceSettings(
        checkpoint="(in memory)", frame_sampling=UniformSampling(config.num_frames),
        generation=GenerationConfig(max_new_tokens=config.max_new_tokens, do_sample=False)))
    model.eval()
    predictions = []
    for start in range(0, len(rows), 20):
        encoded = [generator.encode(VideoRequest(row["idx"], frames[row["messages"][0]["content"][0]["path"]],
                                                 TEST_PROMPT)) for row in rows[start : start + 20]]
        predictions += generator.generate(generator.collate(encoded), seed=0)
    return predictions


def score(model, processor, frames, rows, config: SweepConfig) -> dict:
    """Event F1 of greedy descriptions and reference loss (own / other video, per word class)."""
    from tarsier_hf.dream_s import corpus_event_scores, event_scores, word_classes
    from tarsier_hf.eval.reference_loss import own_vs_other_video

    predictions = describe(model, processor, frames, rows, config)
    corpus = corpus_event_scores(event_scores(p, row["events"]) for p, row in zip(predictions, rows))
    return {"f1": corpus["f1"], "precision": corpus["precision"], "recall": corpus["recall"],
            **own_vs_other_video(model, processor, rows, word_classes, num_frames=config.num_frames, videos=frames),
            "examples": predictions[:3]}


def run_config(config: SweepConfig, args: SweepArguments) -> dict:
    from tarsier_hf.tiny_recipe.stages import make_language_model

    started = time.perf_counter()
    frames, rows = render_dataset(config, args.data_workers)
    torch.manual_seed(config.seed)
    model, processor = build_model(config, str(make_language_model(config.llm_layers, Path(args.parts_dir))))
    device = torch.device(args.device)
    model.to(device)
    collator = in_memory_collator(processor, frames)
    rng = np.random.default_rng(config.seed)
    tasks1, tasks2 = set(config.stage1_tasks.split(",")), set(config.stage2_tasks.split(","))
    curve = []

    def checkpoint_score(step: int) -> None:
        if config.eval_every and step % config.eval_every == 0:
            result = score(model, processor, frames, rows["test"][:30], config)
            curve.append({"stage2_step": step, **{k: result[k] for k in ("f1", "nll_own_video", "nll_other_video")}})
            model.train()

    train_started = time.perf_counter()
    losses1 = train_stage(model, collator, [r for r in rows["stage1"] if r["task"] in tasks1], config.stage1_steps,
                          stage1_sampling(config), config, device, rng) if config.stage1_steps else []
    losses2 = train_stage(model, collator, [r for r in rows["stage2"] if r["task"] in tasks2], config.stage2_steps,
                          UniformSampling(config.num_frames), config, device, rng,
                          on_step=checkpoint_score) if config.stage2_steps else []
    train_s = time.perf_counter() - train_started
    result = score(model, processor, frames, rows["test"], config)
    return {"config": asdict(config), **result, "curve": curve, "train_s": train_s,
            "total_s": time.perf_counter() - started, "final_losses": [losses1[-1:], losses2[-1:]],
            "device": str(device)}


def read_configs(spec: str) -> list[SweepConfig]:
    """`SweepConfig`s from a JSONL file, or from JSON lines given inline (`spec` is not a file)."""
    if os.path.isfile(spec):
        source, lines = spec, read_jsonl_objects(spec)
    else:
        source, lines = "--configs", enumerate((json.loads(line) for line in spec.splitlines() if line.strip()), 1)
    known = {f.name for f in fields(SweepConfig)}
    configs = []
    for number, data in lines:
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{source}: line {number}: unknown SweepConfig fields {sorted(unknown)}")
        configs.append(SweepConfig(**data))
    return configs


def main(argv: list[str] | None = None) -> int:
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(SweepArguments).parse_args_into_dataclasses(args=argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = read_configs(args.configs)
    done = set()
    if os.path.isfile(args.output):
        done = {row["config"]["tag"] for _, row in read_jsonl_objects(args.output)}
    for config in configs:
        if config.tag in done:
            print(f"{config.tag}: already in {args.output}, skipped")
            continue
        result = run_config(config, args)
        with open(args.output, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(result) + "\n")
        print(f"{config.tag}: event F1 {result['f1']:.3f}, reference loss own/other video "
              f"{result['nll_own_video']:.3f}/{result['nll_other_video']:.3f}, train {result['train_s']:.0f} s",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
