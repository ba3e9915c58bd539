"""The tiny recipe's data and training phases: DREAM-S, the cut SmolLM2, stage 0 (the vision tower) and stages 1 and
2 (`train_sft.py` subprocesses) of one run."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from processing_tarsier import CHAT_TEMPLATES
from tarsier_hf.dream_s import BuildConfig, build_dataset
from tarsier_hf.jsonl import read_jsonl_objects
from tarsier_hf.tiny_recipe.arguments import TinyRecipeArguments
from tarsier_hf.tiny_recipe.local_llm import materialize_smollm2
from tarsier_hf.tiny_recipe.phases import RECIPES, REPO, TEST_PROMPT, PhaseTimer, log, run_logged
from tarsier_hf.tiny_recipe.runs import RunSpec
from tarsier_hf.tiny_recipe.vocabulary import cut_vocabulary

CHAT_TEMPLATE = "chatml"  # recipes/tiny/stage{1,2}.yaml


def make_data(args: TinyRecipeArguments, data_dir: Path) -> dict:
    """Generate DREAM-S (progress bar on stderr); returns its info.json content."""

    if args.keep_going and (data_dir / "info.json").is_file():
        return json.loads((data_dir / "info.json").read_text())
    config = BuildConfig(out=str(data_dir), seed=args.seed, num_train=args.num_train, num_test=args.num_test,
                         max_subjects=args.max_subjects, stage0_frames_per_clip=args.stage0_frames_per_clip,
                         size=args.video_size, num_workers=min(2, os.cpu_count() or 1))
    return build_dataset(config, progress=True)


def make_language_model(num_layers: int, parts_dir: Path, data_dir: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct with only its first `num_layers` decoder layers (+ its tokenizer), as a folder.

    With `data_dir` (a DREAM-S folder) the vocabulary is also cut to the tokens of its training conversations
    and of the test prompt, as the recipe's chat template renders them (`tarsier_hf.tiny_recipe.vocabulary`): 49,152 -> ~730
    rows of the tied embedding table and LM head, the same tokens and the same logits on DREAM-S text.
    """
    source = materialize_smollm2()
    target = parts_dir / (f"smollm2-135m-first{num_layers}" + ("-dreams-vocab" if data_dir is not None else ""))
    if (target / "config.json").is_file():
        return target
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model.model.layers = model.model.layers[:num_layers]
    model.config.num_hidden_layers = num_layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:num_layers]
    if data_dir is not None:
        template = CHAT_TEMPLATES[CHAT_TEMPLATE]
        texts = [tokenizer.apply_chat_template(row["messages"], chat_template=template, tokenize=False)
                 for name in ("stage1", "stage2")
                 for _, row in read_jsonl_objects(data_dir / f"{name}.jsonl", RuntimeError)]
        texts.append(tokenizer.apply_chat_template(
            [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": TEST_PROMPT}]}],
            chat_template=template, tokenize=False, add_generation_prompt=True))
        model, tokenizer = cut_vocabulary(model, tokenizer, texts)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def launch_train(stage: int, args: TinyRecipeArguments, overrides: dict, log_file: Path) -> None:
    """`accelerate launch train_sft.py --config recipes/tiny/stageN.yaml --key value ...` in a subprocess."""
    # accelerate launch runs the script with OMP_NUM_THREADS=1 unless told otherwise: give it every core
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no",
           "--num_cpu_threads_per_process", str(os.cpu_count() or 1),
           str(REPO / "train_sft.py"), "--config", str(RECIPES / f"stage{stage}.yaml")]
    for key, value in overrides.items():
        if value is None:
            continue
        cmd.append(f"--{key}")
        cmd += [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
    run_logged(cmd, log_file)


def pretrain_tower(args: TinyRecipeArguments, out: Path, timer: PhaseTimer) -> Path:
    """Stage 0: `python -m tarsier_hf.training.vision_pretraining --config recipes/tiny/stage0.yaml ...` (multi-label
    classification of single frames' facts); returns the `clip_vision_model` folder that stages 1 and 2 load."""
    data_dir, tower = out / "data", out / "stage0"
    if args.keep_going and (tower / "config.json").is_file():
        return tower
    log(f"stage 0 (vision tower pre-training on single frames) -> {tower}")
    cmd = [sys.executable, "-m", "tarsier_hf.training.vision_pretraining", "--config", str(RECIPES / "stage0.yaml"),
           "--frames_file", str(data_dir / "stage0.jsonl"), "--video_root", str(data_dir),
           "--output_dir", str(tower), "--seed", str(args.seed)]
    if args.stage0_steps:
        cmd += ["--max_steps", str(args.stage0_steps)]
    if args.quick:
        cmd += ["--per_device_train_batch_size", "8"]
    with timer.phase("stage0"):
        run_logged(cmd, out / "logs" / "stage0.log")
    return tower


def train_run(spec: RunSpec, args: TinyRecipeArguments, out: Path, parts: dict, timer: PhaseTimer) -> Path:
    """Train stages 1 and 2 of one run; returns the checkpoint folder that gets evaluated."""
    data_dir = out / "data"
    run_dir = out if spec.name == "full" else out / "ablations" / spec.name
    frames = spec.num_frames or args.num_frames
    common = {"per_device_train_batch_size": args.batch_size, "seed": args.seed,
              "dataloader_num_workers": args.dataloader_workers}
    # the pretrained tower stays frozen (as in the paper); a tower from scratch has to learn in stages 1 and 2
    model_parts = {"vision_model": parts["tower"], "train_vision_tower": "false"} if spec.stage0 else {
        "vision_model": parts["vision_config"], "train_vision_tower": "true"}
    model_parts["language_model"] = parts["language_model"]
    checkpoint = None
    for stage, wanted, title in ((1, spec.stage1, "multi-task pre-training"),
                                 (2, spec.stage2, "multi-grained instruction tuning")):
        if not wanted:
            continue
        # stage 2 starts from stage 1; without it, an empty model_name_or_path overrides the YAML's stage-1 path
        # and train_sft.py builds from the parts
        source = model_parts if stage == 1 else (
            {"model_name_or_path": checkpoint, "train_vision_tower": model_parts["train_vision_tower"]}
            if checkpoint else {"model_name_or_path": "", **model_parts})
        checkpoint = run_dir / f"stage{stage}"
        if args.keep_going and (checkpoint / "config.json").is_file():
            continue
        log(f"{spec.name}: stage {stage} ({title}) -> {checkpoint}")
        with timer.phase(f"{spec.name}/stage{stage}"):
            launch_train(stage, args, {
                **source, **common, "dataset_paths": [data_dir / f"stage{stage}.jsonl"], "video_roots": [data_dir],
                "output_dir": checkpoint, "max_steps": args.stage1_steps if stage == 1 else args.stage2_steps,
                "num_frames": [frames],
            }, run_dir / "logs" / f"stage{stage}.log")
    return checkpoint
