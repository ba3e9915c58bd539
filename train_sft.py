"""
Supervised fine-tuning of Tarsier with TRL's `SFTTrainer`: both stages of the paper's recipe (section 3.2, App. A).

    # one process (CPU or one GPU)
    python train_sft.py --config recipes/stage1.yaml
    # several GPUs / nodes: pick an accelerate config (recipes/README.md)
    accelerate launch --config_file recipes/accelerate/deepspeed_zero2.yaml train_sft.py --config recipes/stage2.yaml
    # any option on the command line (overrides the YAML)
    python train_sft.py --model_name_or_path ./tarsier-7b --dataset_paths data/train.jsonl --video_root data \\
        --frame_sampling instruction --output_dir runs/stage2 --max_steps 10000

Arguments come in three groups: `TarsierModelArguments` (which model, what trains), `TarsierDataArguments`
(which data, how frames are sampled) and `TarsierSFTConfig`: TRL's `SFTConfig` (optimiser, schedule, batch, saving,
hub; `--help`) plus `--loss_head fused|plain` and `--vision_learning_rate` (training/trainer.py).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Running from any folder (`python path/to/train_sft.py`) must still find the repo's modules.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from transformers import set_seed  # noqa: E402
from transformers.trainer_utils import get_last_checkpoint  # noqa: E402
from trl import TrlParser  # noqa: E402

from training.collator import FramePolicy, TarsierVideoCollator  # noqa: E402
from training.data import ConversationDataset, DatasetSpec, load_prompt_pools, parse_weights  # noqa: E402
from training.model_builder import build_from_parts, copy_code_files, load_tarsier, save_tarsier  # noqa: E402
from training.model_card import prepare_hub_folder, push_folder, render_model_card  # noqa: E402
from training.trainer import TarsierSFTConfig, TarsierSFTTrainer  # noqa: E402

logger = logging.getLogger("train_sft")

DEFAULT_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass
class TarsierModelArguments:
    """Which model to train and which of its parts train."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A Tarsier folder or Hub id. Leave empty to build from parts (below)."}
    )
    vision_model: str | None = field(
        default=None,
        metadata={"help": "Build from parts: CLIP/SigLIP folder or Hub id (weights loaded), or a vision config "
                  "JSON (model_type clip_vision_model / siglip_vision_model; random weights)."},
    )
    language_model: str | None = field(
        default=None, metadata={"help": "Build from parts: causal LM folder or Hub id (weights + tokenizer)."}
    )
    projector_path: str | None = field(
        default=None, metadata={"help": "Build from parts: safetensors file with projector weights (else fresh)."}
    )
    chat_template: str = field(
        default="vicuna",
        metadata={"help": "Build from parts: processing_tarsier.CHAT_TEMPLATES name (vicuna, mistral, yi, chatml) "
                  "or a Jinja string with {% generation %} markers."},
    )
    use_frame_separators: bool = field(default=True, metadata={"help": "Released per-frame token layout."})
    vision_feature_layer: int = field(default=-2, metadata={"help": "Vision hidden state that is projected."})
    train_vision_tower: bool = field(default=False, metadata={"help": "Train the vision tower (paper: frozen)."})
    train_projector: bool = field(default=False, metadata={"help": "Train the projector (paper: frozen)."})
    train_llm_layers: str = field(
        default="all",
        metadata={"help": "'all' (paper), 'none', or k: only the top k decoder layers + norm + LM head (Table 6)."},
    )
    train_embeddings: bool = field(
        default=True,
        metadata={"help": "Train the token embeddings and LM head along with the LLM layers (false: keep them frozen)."},
    )
    use_lora: bool = field(default=False, metadata={"help": "LoRA on the language model (peft) instead of full tuning."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(
        default=DEFAULT_LORA_TARGETS,
        metadata={"help": "Regex (re.fullmatch on module names) of the Linear layers that get adapters; the "
                  "default covers the language model's attention and MLP only."},
    )
    lora_modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules trained and saved whole next to the adapter (e.g. multi_modal_projector)."}
    )
    merge_lora_on_save: bool = field(
        default=False, metadata={"help": "After a LoRA run, also save the merged model in OUTPUT_DIR/merged."}
    )


@dataclass
class TarsierDataArguments:
    """Which data to train on and how frames are sampled."""

    dataset_paths: list[str] = field(
        default_factory=list,
        metadata={"help": "JSONL files, folders of them, or Hub dataset ids (training/data.py documents the formats)."},
    )
    video_roots: list[str] | None = field(
        default=None, metadata={"help": "Folder relative media paths are resolved against: one, or one per dataset."}
    )
    dataset_split: str = field(default="train", metadata={"help": "Split of Hub datasets."})
    source_weights: list[str] | None = field(
        default=None, metadata={"help": "Per-source re-sampling weights, NAME=WEIGHT (e.g. webvid=0.3 ssv2=2)."}
    )
    prompt_pools: str | None = field(
        default=None, metadata={"help": "JSON/YAML {task: [prompts]} merged over the built-in pools."}
    )
    resample_prompts: bool = field(
        default=False, metadata={"help": "Replace user prompts of pooled tasks with a random prompt of the pool."}
    )
    frame_sampling: str = field(
        default="uniform",
        metadata={"help": "random_segments (stage 1), instruction (stage 2: first+last, 16 for complex sources "
                  "else 8), uniform, or fps."},
    )
    num_frames: list[int] = field(
        default_factory=lambda: [8], metadata={"help": "Frames per video: N, or LOW HIGH for random_segments."}
    )
    complex_sources: list[str] | None = field(
        default=None, metadata={"help": "Sources sampled with 16 frames under 'instruction' (the movie clips)."}
    )
    video_fps: float | None = field(default=None, metadata={"help": "Rate of the 'fps' policy."})
    max_frames: int = field(default=64, metadata={"help": "Cap of the 'fps' policy."})
    on_too_long: str = field(
        default="skip", metadata={"help": "Samples above max_length after expansion: 'skip' (counted) or 'error'."}
    )
    fail_fast: bool = field(default=False, metadata={"help": "Raise on the first unreadable video instead of skipping."})


def parse_llm_layers(value: str) -> bool | int:
    if value == "all":
        return True
    if value == "none":
        return False
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"--train_llm_layers must be 'all', 'none' or an integer, got {value!r}") from None


def build_model(model_args: TarsierModelArguments, output_dir: str, is_main_process: bool = True):
    """The model and processor to train, with parts frozen per the arguments (or wrapped in LoRA)."""
    if model_args.model_name_or_path:
        model, processor = load_tarsier(model_args.model_name_or_path)
        base_name = model_args.model_name_or_path
    elif model_args.vision_model and model_args.language_model:
        model, processor = build_from_parts(
            model_args.vision_model, model_args.language_model, model_args.projector_path,
            chat_template=model_args.chat_template, use_frame_separators=model_args.use_frame_separators,
            vision_feature_layer=model_args.vision_feature_layer,
        )
        base_name = f"{model_args.language_model} + {model_args.vision_model}"
        if model_args.use_lora:  # an adapter needs a saved base to merge into later
            base_dir = os.path.join(output_dir, "base_model")
            if is_main_process:
                save_tarsier(model, processor, base_dir)
            model.config._name_or_path = base_dir
            model.name_or_path = base_dir
            base_name = base_dir
    else:
        raise ValueError("give --model_name_or_path, or both --vision_model and --language_model to build from parts")

    peft_config = None
    counts = model.set_trainable_parts(
        train_vision_tower=model_args.train_vision_tower,
        train_projector=model_args.train_projector,
        train_language_model=False if model_args.use_lora else parse_llm_layers(model_args.train_llm_layers),
        train_embeddings=model_args.train_embeddings,
    )
    if model_args.use_lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
            target_modules=model_args.lora_target_modules, modules_to_save=model_args.lora_modules_to_save,
            task_type="CAUSAL_LM",
        )
    logger.info("trainable parameters before adapters: %s", counts)
    return model, processor, peft_config, base_name


def build_dataset(data_args: TarsierDataArguments, seed: int) -> ConversationDataset:
    if not data_args.dataset_paths:
        raise ValueError("give at least one --dataset_paths")
    roots = data_args.video_roots or [None]
    if len(roots) == 1:
        roots = roots * len(data_args.dataset_paths)
    if len(roots) != len(data_args.dataset_paths):
        raise ValueError(f"--video_roots: give one folder or one per dataset ({len(data_args.dataset_paths)})")
    specs = [DatasetSpec(p, r, data_args.dataset_split) for p, r in zip(data_args.dataset_paths, roots)]
    return ConversationDataset(
        specs, source_weights=parse_weights(data_args.source_weights),
        prompt_pools=load_prompt_pools(data_args.prompt_pools), resample_prompts=data_args.resample_prompts, seed=seed,
    )


def warn_if_max_length_too_short(data_args: TarsierDataArguments, processor, max_length: int | None) -> None:
    """Say up front when `max_length` cannot hold the largest frame count (those samples would all be skipped)."""
    if max_length is None:
        return
    if data_args.frame_sampling == "instruction":
        frames = 16 if data_args.complex_sources else 8
    elif data_args.frame_sampling == "fps":
        frames = data_args.max_frames
    else:
        frames = max(data_args.num_frames)
    needed = frames * processor.tokens_per_frame
    if needed >= max_length:
        logger.warning(
            "max_length=%d cannot hold %d frames x %d positions = %d visual tokens: such samples are skipped "
            "(on_too_long=%s). Raise --max_length (the recipes use 20480 / 12288).",
            max_length, frames, processor.tokens_per_frame, needed, data_args.on_too_long,
        )


def resolve_resume(value: str | None, output_dir: str) -> str | None:
    """`--resume_from_checkpoint last|true` means the newest checkpoint in output_dir (None if there is none)."""
    if value is None or value.lower() in ("false", "none", ""):
        return None
    if value.lower() in ("last", "true"):
        last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if last is None:
            logger.warning("no checkpoint in %s to resume from; starting fresh", output_dir)
        return last
    if not os.path.isdir(value):
        raise FileNotFoundError(f"--resume_from_checkpoint {value}: no such checkpoint folder")
    return value


def main(
    model_args: TarsierModelArguments, data_args: TarsierDataArguments, training_args: TarsierSFTConfig
) -> str:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    # TRL has no video support: keep our columns, skip its tokenisation, feed batches through our collator.
    training_args.remove_unused_columns = False
    training_args.dataset_kwargs = {**(training_args.dataset_kwargs or {}), "skip_prepare_dataset": True}
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False  # pushed once at the end, below

    # the parts' fresh weights (vision tower, projector, new token rows) come from the global RNG: seed it first,
    # or the same --seed builds a different model every run (the Trainer only seeds once the model exists)
    set_seed(training_args.seed)
    model, processor, peft_config, base_name = build_model(
        model_args, training_args.output_dir, is_main_process=training_args.process_index == 0
    )
    train_dataset = build_dataset(data_args, training_args.seed)
    os.makedirs(training_args.output_dir, exist_ok=True)
    warn_if_max_length_too_short(data_args, processor, training_args.max_length)
    collator = TarsierVideoCollator(
        processor,
        FramePolicy(data_args.frame_sampling, data_args.num_frames, data_args.complex_sources or (),
                    data_args.video_fps, data_args.max_frames),
        max_length=training_args.max_length,
        on_too_long=data_args.on_too_long,
        fail_fast=data_args.fail_fast,
        dataset=train_dataset,
        skip_log=os.path.join(training_args.output_dir, "skipped_samples.jsonl"),
        seed=training_args.seed,
        rank=training_args.process_index,
    )
    trainer = TarsierSFTTrainer(
        model=model, args=training_args, train_dataset=train_dataset.as_hf_dataset(), data_collator=collator,
        processing_class=processor, peft_config=peft_config,
    )
    trainer.train(resume_from_checkpoint=resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir))
    if trainer.is_fsdp_enabled:  # SHARDED_STATE_DICT checkpoints stay sharded; the final folder is gathered in full
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(training_args.output_dir)
    trainer.save_state()  # trainer_state.json (log history, global step) next to the final weights

    output_dir = training_args.output_dir
    if trainer.is_world_process_zero():
        processor.save_pretrained(output_dir)
        if model_args.use_lora:
            if model_args.merge_lora_on_save:
                merged = trainer.model.merge_and_unload()
                save_tarsier(merged, processor, os.path.join(output_dir, "merged"))
        else:
            copy_code_files(output_dir)
        card = render_model_card(
            Path(output_dir).name if training_args.hub_model_id is None else training_args.hub_model_id,
            base_name, data_args.dataset_paths,
            training={**{k: v for k, v in asdict(data_args).items() if v not in (None, [], "")},
                      "learning_rate": training_args.learning_rate, "max_steps": training_args.max_steps,
                      "per_device_train_batch_size": training_args.per_device_train_batch_size,
                      "gradient_accumulation_steps": training_args.gradient_accumulation_steps,
                      "world_size": training_args.world_size, "train_llm_layers": model_args.train_llm_layers,
                      "train_projector": model_args.train_projector, "use_lora": model_args.use_lora,
                      "skipped_samples": trainer.skip_totals["skipped_samples"],
                      "skipped_too_long": trainer.skip_totals["skipped_too_long"]},
            is_adapter=model_args.use_lora,
        )
        files = prepare_hub_folder(output_dir, card)
        if push_to_hub:
            repo_id = training_args.hub_model_id or Path(output_dir).name
            url = push_folder(output_dir, repo_id, private=training_args.hub_private_repo, token=training_args.hub_token)
            logger.info("pushed %d files to %s", len(files), url)
    trainer.accelerator.wait_for_everyone()
    return output_dir


def make_parser() -> TrlParser:
    return TrlParser((TarsierModelArguments, TarsierDataArguments, TarsierSFTConfig))


if __name__ == "__main__":
    model_args, data_args, training_args = make_parser().parse_args_and_config()
    main(model_args, data_args, training_args)
