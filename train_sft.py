"""
Supervised fine-tuning of Tarsier with TRL's `SFTTrainer`: both stages of the paper's recipe (section 3.2, App. A).

    # one process (CPU or one GPU)
    python train_sft.py --config recipes/stage1.yaml
    # several GPUs / nodes: pick an accelerate config (recipes/README.md)
    accelerate launch --config_file recipes/accelerate/deepspeed_zero2.yaml train_sft.py --config recipes/stage2.yaml
    # any option on the command line (overrides the YAML); TRL's own names where TRL has the option
    python train_sft.py --model_name_or_path ./tarsier-7b --dataset_name lmms-lab/LLaVA-Video-178K \\
        --dataset_config 0_30_s_academic_v0_1 --dataset_train_split caption --video_roots data/llava-video \\
        --frame_sampling instruction --output_dir runs/stage2 --max_steps 10000 --use_peft --lora_r 16
    # Tarsier2: a converted (Qwen2-VL) folder trains the same way (recipes/README.md, "Tarsier2 (Qwen2-VL)")
    accelerate launch train_sft.py --model_name_or_path tarsier2-recap-7b-hf --frame_sampling tarsier2 --num_frames 16 ...

Arguments (tarsier_hf/training/arguments.py): TRL's `ScriptArguments` (dataset), `ModelConfig` (model, dtype, attention, PEFT),
`TarsierSFTConfig` (TRL's `SFTConfig` plus `--loss_head` and `--vision_learning_rate`) and `TarsierArguments`
(building from parts, freezing, video data and frame sampling). `python train_sft.py --help` lists them all.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict

import torch
from transformers import set_seed
from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config, get_quantization_config

from tarsier_hf import families
from tarsier_hf.cli import help_text
from tarsier_hf.training.arguments import (
    DEFAULT_LORA_TARGETS, REFUSED_SFT_OPTIONS, TarsierArguments, check_sft_config, refused_help,
)
from tarsier_hf.training.collator import TarsierVideoCollator
from tarsier_hf.training.conversation_dataset import ConversationDataset, StreamingConversationDataset
from tarsier_hf.training.dataset_spec import DatasetSpec
from tarsier_hf.training.freezing import set_trainable_parts
from tarsier_hf.training.loading import has_splits
from tarsier_hf.training.mixing import parse_weights
from tarsier_hf.training.model_builder import build_from_parts, save_tarsier
from tarsier_hf.training.prompt_pools import load_prompt_pools
from tarsier_hf.training.run_output import RunRecords, save_run
from tarsier_hf.training.trainer import TarsierSFTConfig, TarsierSFTTrainer, last_complete_checkpoint

logger = logging.getLogger("train_sft")
Mixture = ConversationDataset | StreamingConversationDataset  # a training mixture, map-style or streamed


def parse_llm_layers(value: str) -> bool | int:
    if value == "all":
        return True
    if value == "none":
        return False
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"--train_llm_layers must be 'all', 'none' or an integer, got {value!r}") from None


def video_family(model_name_or_path: str) -> families.ModelFamily:
    """The family of the checkpoint to train (`families.detect_family`, from its config); `ValueError` for a
    text-only one: train_sft.py trains video models."""
    family = families.detect_family(model_name_or_path)
    if not family.multimodal:
        raise ValueError(f"--model_name_or_path {model_name_or_path}: a text-only {family.name} checkpoint; "
                         "train_sft.py trains video models (Tarsier, Tarsier2 / Qwen2-VL)")
    return family


def build_model(
    model_args: ModelConfig, tarsier_args: TarsierArguments, output_dir: str, is_main_process: bool = True
):
    """
    The model and processor to train, with parts frozen per the arguments, and the LoRA config (`--use_peft`).

    `--model_name_or_path` loads a checkpoint of either video family through `tarsier_hf.families`: a Tarsier
    folder (`TarsierForConditionalGeneration` + `TarsierProcessor`) or a Tarsier2 / Qwen2-VL folder (transformers'
    `Qwen2VLForConditionalGeneration` + `Tarsier2Processor`). `--dtype auto` is bfloat16 when CUDA is available,
    else float32 (`families.resolve_dtype`). Otherwise a Tarsier is built from `--vision_model` and
    `--language_model`.

    Returns `(model, processor, peft_config or None, base model name for the card)`.
    """
    if model_args.lora_task_type != "CAUSAL_LM":
        raise ValueError(f"--lora_task_type {model_args.lora_task_type}: Tarsier trains a causal LM (CAUSAL_LM)")
    quantization_config = get_quantization_config(model_args)
    if model_args.model_name_or_path:
        kwargs = {"revision": model_args.model_revision}
        if model_args.attn_implementation:
            kwargs["attn_implementation"] = model_args.attn_implementation
        if quantization_config is not None:
            kwargs["quantization_config"] = quantization_config
        video_family(model_args.model_name_or_path)  # a text-only checkpoint is refused before its weights load
        dtype = families.resolve_dtype(model_args.dtype, "cuda" if torch.cuda.is_available() else "cpu")
        model, processor, _ = families.load_model_and_processor(model_args.model_name_or_path, dtype, **kwargs)
        base_name = model_args.model_name_or_path
    elif tarsier_args.vision_model and tarsier_args.language_model:
        if quantization_config is not None:
            raise ValueError("--load_in_4bit/--load_in_8bit quantise a saved checkpoint on loading; a model built "
                             "from parts is assembled in float32: save it first, then train it with "
                             "--model_name_or_path")
        model, processor = build_from_parts(
            tarsier_args.vision_model, tarsier_args.language_model, tarsier_args.projector_path,
            chat_template=tarsier_args.chat_template, use_frame_separators=tarsier_args.use_frame_separators,
            vision_feature_layer=tarsier_args.vision_feature_layer,
            vision_feature_select_strategy=tarsier_args.vision_feature_select_strategy,
            vision_feature_pooling=tarsier_args.vision_feature_pooling,
            num_frame_embeddings=tarsier_args.num_frame_embeddings,
        )
        if model_args.dtype not in (None, "auto", "float32"):
            model = model.to(getattr(torch, model_args.dtype))
        if model_args.attn_implementation:
            model.set_attn_implementation(model_args.attn_implementation)
        base_name = f"{tarsier_args.language_model} + {tarsier_args.vision_model}"
        if model_args.use_peft:  # an adapter needs a saved base to merge into later
            base_dir = os.path.join(output_dir, "base_model")
            if is_main_process:
                save_tarsier(model, processor, base_dir)
            model.config._name_or_path = base_dir
            model.name_or_path = base_dir
            base_name = base_dir
    else:
        raise ValueError("give --model_name_or_path, or both --vision_model and --language_model to build from parts")

    counts = set_trainable_parts(
        model,
        train_vision_tower=tarsier_args.train_vision_tower,
        train_projector=tarsier_args.train_projector,
        train_language_model=False if model_args.use_peft else parse_llm_layers(tarsier_args.train_llm_layers),
        train_embeddings=tarsier_args.train_embeddings,
    )
    if model_args.use_peft and model_args.lora_target_modules is None:
        # TRL leaves the choice to peft, which knows no Tarsier: adapters on the language model's attention and
        # MLP projections only (the regex matches no vision block, projector or Qwen2-VL merger)
        model_args.lora_target_modules = DEFAULT_LORA_TARGETS
    peft_config = get_peft_config(model_args)
    logger.info("trainable parameters before adapters: %s", counts)
    return model, processor, peft_config, base_name


def dataset_specs(script_args: ScriptArguments, tarsier_args: TarsierArguments, split: str) -> list[DatasetSpec]:
    """`--dataset_name` (TRL's, with its config and streaming) followed by the `--dataset_paths` mixture."""
    sources = ([script_args.dataset_name] if script_args.dataset_name else []) + list(tarsier_args.dataset_paths)
    if not sources:
        raise ValueError("give --dataset_name (one dataset) and/or --dataset_paths (a mixture)")
    roots = tarsier_args.video_roots or [None]
    if len(roots) == 1:
        roots = roots * len(sources)
    if len(roots) != len(sources):
        raise ValueError(f"--video_roots: give one folder or one per dataset ({len(sources)}: {sources})")
    return [
        DatasetSpec(source, root, split, name=script_args.dataset_config if source == script_args.dataset_name else None,
                    streaming=script_args.dataset_streaming)
        for source, root in zip(sources, roots)
    ]


def build_dataset(
    script_args: ScriptArguments, tarsier_args: TarsierArguments, seed: int, split: str | None = None,
    bad_rows_log: str | None = None, processor=None,
) -> Mixture:
    """The training mixture (`split=None`: `--dataset_train_split`), streamed with `--dataset_streaming`.

    Every row is validated (`tarsier_hf.training.row_checks.check_row`, against the visual placeholders of `processor`):
    here, before training, or, streamed, as it streams past; bad rows are appended to `bad_rows_log` and skipped,
    or fatal under --fail_fast.
    """
    specs = dataset_specs(script_args, tarsier_args, split or script_args.dataset_train_split)
    options = dict(
        source_weights=parse_weights(tarsier_args.source_weights),
        prompt_pools=load_prompt_pools(tarsier_args.prompt_pools), resample_prompts=tarsier_args.resample_prompts,
        seed=seed, fail_fast=tarsier_args.fail_fast, bad_rows_log=bad_rows_log,
    )
    if processor is not None:
        options["placeholders"] = {"video": processor.video_token, "image": processor.image_token}
    if script_args.dataset_streaming:
        return StreamingConversationDataset(specs, **options)
    return ConversationDataset(specs, check_media=True, **options)


def check_data_arguments(script_args: ScriptArguments, training_args, tarsier_args: TarsierArguments) -> None:
    """Refuse, before anything loads, data options that cannot work together."""
    tarsier_args.sampling()  # an unknown policy or a missing parameter fails here, with its name
    if script_args.dataset_streaming and training_args.max_steps <= 0:
        raise ValueError("--dataset_streaming has no length to count epochs by: set --max_steps")
    if training_args.eval_strategy != "no":
        single = [s.label for s in dataset_specs(script_args, tarsier_args, "test") if not has_splits(s.path)]
        if single:
            raise ValueError(f"--eval_strategy {training_args.eval_strategy}: {single} have no splits to take "
                             f"--dataset_test_split {script_args.dataset_test_split} from (a file or a folder of files "
                             "is a single split); evaluate on Hub ids or DatasetDict folders, or set --eval_strategy no")


def as_hf_dataset(dataset, training_args):
    """What `SFTTrainer` takes: a lazy `datasets.Dataset`, or an `IterableDataset` with a shard per DataLoader worker."""
    if dataset is None:
        return None
    if isinstance(dataset, StreamingConversationDataset):
        return dataset.as_hf_dataset(num_shards=max(1, training_args.dataloader_num_workers))
    return dataset.as_hf_dataset()


def warn_if_max_length_too_short(tarsier_args: TarsierArguments, processor, max_length: int | None) -> None:
    """Say up front when `max_length` cannot hold the largest frame count (those samples would all be skipped);
    Tarsier only, whose frames have a fixed token count."""
    frames = tarsier_args.sampling().max_frames_per_video(complex_clip=bool(tarsier_args.complex_sources))
    if max_length is None or frames is None or not hasattr(processor, "tokens_per_frame"):
        return  # a Qwen2-VL frame's token count depends on its size: known only once it is read
    needed = frames * processor.tokens_per_frame
    if needed >= max_length:
        logger.warning(
            "max_length=%d cannot hold %d frames x %d positions = %d visual tokens: such samples are skipped "
            "(on_too_long=%s). Raise --max_length (the recipes use 20480 / 12288).",
            max_length, frames, processor.tokens_per_frame, needed, tarsier_args.on_too_long,
        )


def resolve_resume(value: str | None, output_dir: str) -> str | None:
    """`--resume_from_checkpoint last|true` means the newest complete checkpoint in output_dir (None if there is
    none; `last_complete_checkpoint`)."""
    if value is None or value.lower() in ("false", "none", ""):
        return None
    if value.lower() in ("last", "true"):
        last = last_complete_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if last is None:
            logger.warning("no checkpoint in %s to resume from; starting fresh", output_dir)
        return last
    if not os.path.isdir(value):
        raise FileNotFoundError(f"--resume_from_checkpoint {value}: no such checkpoint folder")
    return value


def prepare_run(script_args: ScriptArguments, training_args: TarsierSFTConfig, tarsier_args: TarsierArguments) -> bool:
    """Check the options before anything loads and set TRL's for video (it has no video support: our columns are
    kept, its tokenisation skipped, batches come from our collator). Returns `--push_to_hub`, which is held back
    from the Trainer: the finished folder is pushed once, by `save_run`."""
    if not torch.cuda.is_available():  # DeepSpeed, when installed, would warn on every save that it fell back to CPU
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    check_sft_config(training_args)
    training_args.remove_unused_columns = False
    training_args.dataset_kwargs = {**(training_args.dataset_kwargs or {}), "skip_prepare_dataset": True}
    check_data_arguments(script_args, training_args, tarsier_args)
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False
    return push_to_hub


def build_datasets(
    script_args: ScriptArguments, training_args: TarsierSFTConfig, model_args: ModelConfig,
    tarsier_args: TarsierArguments, records: RunRecords,
) -> tuple[Mixture, Mixture | None]:
    """The training and evaluation (or None) mixtures, checked before the model loads (every row, and whether its
    media exist), so a run that cannot train stops in seconds. Rows are checked against the visual placeholders of the
    processor to be trained (a checkpoint's; a model built from parts uses Tarsier's). Every process streams its own
    rows; a map-style mixture is checked alike by every process, recorded by one."""
    set_seed(training_args.seed)
    checking = None
    if model_args.model_name_or_path:
        checking = families.load_processor(model_args.model_name_or_path, video_family(model_args.model_name_or_path))
    train_dataset = build_dataset(
        script_args, tarsier_args, training_args.seed, processor=checking,
        bad_rows_log=records.bad_rows if script_args.dataset_streaming or training_args.process_index == 0 else None,
    )
    eval_dataset = None
    if training_args.eval_strategy != "no":
        eval_dataset = build_dataset(script_args, tarsier_args, training_args.seed, split=script_args.dataset_test_split,
                                     processor=checking)
    return train_dataset, eval_dataset


def build_collator(processor, train_dataset, training_args: TarsierSFTConfig, tarsier_args: TarsierArguments,
                   records: RunRecords) -> TarsierVideoCollator:
    """The video collator of `processor`, with the frame sampling and length policy of the arguments."""
    streaming = isinstance(train_dataset, StreamingConversationDataset)
    return TarsierVideoCollator(
        processor,
        tarsier_args.sampling(),
        complex_sources=tarsier_args.complex_sources or (),
        max_length=training_args.max_length,
        on_too_long=tarsier_args.on_too_long,
        fail_fast=tarsier_args.fail_fast,
        dataset=None if streaming else train_dataset,  # a stream cannot be drawn from: bad samples are dropped
        skip_log=records.skipped_samples,
        seed=training_args.seed,
        rank=training_args.process_index,
    )


def card_training(training_args: TarsierSFTConfig, model_args: ModelConfig, tarsier_args: TarsierArguments) -> dict:
    """How the run trained, for its model card: the Tarsier options given and the Trainer's main ones."""
    return {**{k: v for k, v in asdict(tarsier_args).items() if v not in (None, [], "")},
            "learning_rate": training_args.learning_rate, "max_steps": training_args.max_steps,
            "per_device_train_batch_size": training_args.per_device_train_batch_size,
            "gradient_accumulation_steps": training_args.gradient_accumulation_steps,
            "world_size": training_args.world_size, "use_peft": model_args.use_peft}


def main(
    script_args: ScriptArguments, training_args: TarsierSFTConfig, model_args: ModelConfig,
    tarsier_args: TarsierArguments,
) -> str:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    push_to_hub = prepare_run(script_args, training_args, tarsier_args)
    resume_from = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    records = RunRecords.in_folder(training_args.output_dir)
    records.start(training_args.process_index == 0,
                  keep_skipped_samples=resume_from is not None and not script_args.dataset_streaming)
    os.makedirs(training_args.output_dir, exist_ok=True)

    # Dataset (checked before the model loads)
    train_dataset, eval_dataset = build_datasets(script_args, training_args, model_args, tarsier_args, records)

    # Model, processor and collator. The parts' fresh weights (vision tower, projector, new token rows) come from the
    # global RNG: seed it (again, after the data) or the same --seed builds a different model every run (the Trainer
    # only seeds once the model exists)
    set_seed(training_args.seed)
    model, processor, peft_config, base_name = build_model(
        model_args, tarsier_args, training_args.output_dir, is_main_process=training_args.process_index == 0
    )
    warn_if_max_length_too_short(tarsier_args, processor, training_args.max_length)
    collator = build_collator(processor, train_dataset, training_args, tarsier_args, records)

    # Training
    trainer = TarsierSFTTrainer(
        model=model, args=training_args, data_collator=collator, processing_class=processor, peft_config=peft_config,
        train_dataset=as_hf_dataset(train_dataset, training_args), eval_dataset=as_hf_dataset(eval_dataset, training_args),
    )
    trainer.train(resume_from_checkpoint=resume_from)

    # Save (and push)
    datasets_used = [s.path if isinstance(s.path, str) else type(s.path).__name__
                     for s in dataset_specs(script_args, tarsier_args, script_args.dataset_train_split)]
    return save_run(
        trainer, model, processor, records, base_model=base_name, datasets=datasets_used,
        training=card_training(training_args, model_args, tarsier_args), use_peft=model_args.use_peft,
        merge_lora=tarsier_args.merge_lora_on_save, push_to_hub=push_to_hub,
    )


# TRL's help texts that speak of options this script does not have (its `datasets` mixture) or of defaults it changes
HELP = {
    "dataset_name": "One dataset: a file, folder, save_to_disk folder or Hub id in any layout of recipes/README.md "
                    "(--dataset_paths adds more, for a mixture).",
    "dataset_config": "Config name of --dataset_name (the `name` of datasets.load_dataset).",
    "dataset_train_split": "Split trained on, of every dataset given as a Hub id or dataset folder.",
    "dataset_test_split": "Split evaluated on when --eval_strategy is not 'no'.",
    "dataset_streaming": "Stream every dataset (datasets.load_dataset(..., streaming=True)); needs --max_steps.",
    "lora_target_modules": "LoRA target modules: module names, or one regex matched on full names (default: the "
                           "language model's attention and MLP projections).",
}


def make_parser() -> TrlParser:
    """TRL's parser over `(ScriptArguments, TarsierSFTConfig, ModelConfig, TarsierArguments)`, as `trl sft` orders them."""
    parser = TrlParser((ScriptArguments, TarsierSFTConfig, ModelConfig, TarsierArguments), **help_text(
        "Fine-tune a Tarsier or Tarsier2 checkpoint with TRL's SFTTrainer (the paper's stage 1 or 2); --config YAML "
        "sets any option below, and the command line overrides it.",
        "python train_sft.py --config recipes/stage1.yaml",
        "accelerate launch train_sft.py --config recipes/stage2.yaml --output_dir runs/stage2",
        usage="%(prog)s [--config YAML] [--model_name_or_path MODEL] [--output_dir DIR] [options]"))
    for action in parser._actions:
        if action.dest in REFUSED_SFT_OPTIONS:  # listed, but not as if they worked
            action.help = refused_help(action.dest)
        elif action.dest in HELP:
            action.help = HELP[action.dest]
    return parser


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
