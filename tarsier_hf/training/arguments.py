"""Command-line arguments of `train_sft.py`, shaped like TRL's own scripts (`trl/scripts/sft.py`).

`train_sft.py` parses four dataclasses with TRL's `TrlParser` (YAML via `--config`, the command line wins):

- `trl.ScriptArguments`: `--dataset_name`, `--dataset_config`, `--dataset_train_split`, `--dataset_test_split`,
  `--dataset_streaming`, ...;
- `trl.ModelConfig`: `--model_name_or_path`, `--model_revision`, `--dtype`, `--attn_implementation`, `--use_peft`,
  `--lora_r`, `--lora_alpha`, `--lora_dropout`, `--lora_target_modules`, `--lora_modules_to_save`, ...;
- `TarsierSFTConfig` (tarsier_hf/training/trainer.py): TRL's `SFTConfig` plus `--loss_head` and `--vision_learning_rate`;
- `TarsierArguments` (below): what the three do not cover, i.e. building a Tarsier from parts, freezing, the
  video data (media roots, mixtures, prompt pools) and frame sampling.

`SFTConfig` options that do not apply to video SFT (the collator renders and expands every sample itself, TRL's
dataset preparation is skipped) are refused with the reason (`REFUSED_SFT_OPTIONS`, `check_sft_config`).
`video_sft_config` returns an `SFTConfig` with the two settings a plain `SFTTrainer` needs for our collator.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

from frame_sampling_tarsier import FRAME_SAMPLING_POLICIES, FrameSampling, as_frame_sampling

DEFAULT_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"

_SKIPPED = "TRL's dataset preparation is skipped for video (skip_prepare_dataset): the video collator renders, " \
           "tokenises and expands every conversation itself"

# SFTConfig option -> why it cannot work for video SFT. Setting one to anything but SFTConfig's default raises.
REFUSED_SFT_OPTIONS: dict[str, str] = {
    "packing": "packing concatenates tokenised samples, but every Tarsier sample carries its own frames "
               "(pixel_values split by num_frames) and is expanded by the video collator; TRL refuses packing for "
               "vision data too",
    "packing_strategy": "packing is not supported for video samples (see --packing)",
    "eval_packing": "packing is not supported for video samples (see --packing)",
    "padding_free": "padding-free batches need packed position ids; the video collator pads each batch",
    "dataset_text_field": "there is no text column: the collator renders the `messages` conversation with the "
                          "processor's chat template",
    "dataset_num_proc": _SKIPPED,
    "eos_token": "the processor's chat template ends each turn; " + _SKIPPED,
    "chat_template_path": "a Tarsier checkpoint brings its processor's template; building from parts takes "
                          "--chat_template (vicuna, mistral, yi, chatml or a Jinja string)",
    "pad_to_multiple_of": "the video collator pads to the longest sample of the batch",
    "truncation_mode": "samples are never truncated (that would cut frame runs or the answer): longer ones are "
                       "skipped or raise, see --on_too_long",
    "shuffle_dataset": "the Trainer's sampler already shuffles every epoch; " + _SKIPPED,
    "completion_only_loss": "the loss is always on assistant tokens only (the chat template's {% generation %} "
                            "markers); there are no prompt/completion columns",
}


@dataclass
class TarsierArguments:
    """Tarsier's own options: building from parts, what trains, the video data and frame sampling."""

    # -- the model: built from parts when --model_name_or_path (ModelConfig) is empty -----------------------------
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
        # argparse %-formats help strings: a literal percent sign is written twice
        metadata={"help": "Build from parts: processing_tarsier.CHAT_TEMPLATES name (vicuna, mistral, yi, chatml) "
                  "or a Jinja string with {%% generation %%} markers."},
    )
    use_frame_separators: bool = field(default=True, metadata={"help": "Released per-frame token layout."})
    vision_feature_layer: int = field(default=-2, metadata={"help": "Vision hidden state that is projected."})
    vision_feature_select_strategy: str | None = field(default=None, metadata={
        "help": "'default' (patch features; CLIP's CLS dropped) or 'full' (CLIP's CLS kept: one more position per "
                "frame, needs use_frame_separators false); default: 'default' for CLIP, 'full' for SigLIP."})
    vision_feature_pooling: int = field(default=1, metadata={
        "help": "Average-pool the patch grid with this stride before the projector (LLaVA-NeXT-Video's pooling); "
                "image_size // patch_size leaves one feature per frame."})
    num_frame_embeddings: int = field(default=0, metadata={
        "help": "Build from parts: learned embeddings of each frame's index in its video, added to its projected "
                "features, for up to this many frames (0: none, as the released Tarsier)."})
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
    merge_lora_on_save: bool = field(
        default=False, metadata={"help": "After a --use_peft run, also save the merged model in OUTPUT_DIR/merged."}
    )

    # -- the data ------------------------------------------------------------------------------------------------
    dataset_paths: list[str] = field(
        default_factory=list,
        metadata={"help": "A mixture: files (.jsonl/.json/.parquet/.csv/.tsv), folders of them, save_to_disk "
                  "folders or Hub ids, in any layout of recipes/README.md (added after --dataset_name)."},
    )
    video_roots: list[str] | None = field(
        default=None, metadata={"help": "Folder relative media paths are resolved against: one, or one per dataset."}
    )
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
                  "else 8), uniform, fps, any registered policy, or a JSON object {\"policy\": name, parameter: value}; "
                  "--num_frames / --video_fps / --max_frames fill the parameters of those names."},
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
    fail_fast: bool = field(
        default=False,
        metadata={"help": "Stop before training when any row is bad (listing them all; a streamed dataset stops at "
                  "its first bad row), and on the first unreadable video, instead of skipping and counting them."},
    )

    def sampling(self) -> FrameSampling:
        """The stage's `FrameSampling`: `--frame_sampling` (a policy name, or its JSON object), with `--num_frames`,
        `--video_fps` and `--max_frames` as the parameters `num_frames`, `fps` and `max_frames` where it has them."""
        if self.frame_sampling.lstrip().startswith("{"):
            return as_frame_sampling(json.loads(self.frame_sampling))
        policy = FRAME_SAMPLING_POLICIES.get(self.frame_sampling)
        if policy is None:
            raise ValueError(f"--frame_sampling {self.frame_sampling!r}: unknown policy; known: "
                             f"{sorted(FRAME_SAMPLING_POLICIES)} (or a JSON object)")
        counts = list(self.num_frames)
        given = {"num_frames": counts[0] if len(counts) == 1 else tuple(counts), "fps": self.video_fps,
                 "max_frames": self.max_frames}
        names = {f.name for f in fields(policy)}
        return FrameSampling.from_dict(
            {"policy": self.frame_sampling, **{k: v for k, v in given.items() if k in names and v is not None}})


def refused_help(option: str) -> str:
    """The `--help` text of a refused `SFTConfig` option (argparse %-formats it, hence the doubled percent signs)."""
    return ("Not applicable to video SFT (refused): " + REFUSED_SFT_OPTIONS[option]).replace("%", "%%")


def check_sft_config(args: Any) -> None:
    """Raise `ValueError` naming every `SFTConfig` option in `REFUSED_SFT_OPTIONS` that was set, and why."""
    from trl import SFTConfig

    defaults = {f.name: f.default for f in fields(SFTConfig) if f.name in REFUSED_SFT_OPTIONS}
    # SFTConfig resolves pad_to_multiple_of="auto" to None (or 128 on Neuron) in __post_init__
    resolved = {"auto": (None, 128)}
    problems = [f"--{name} {getattr(args, name)!r}: {REFUSED_SFT_OPTIONS[name]}"
                for name, default in defaults.items()
                if getattr(args, name) != default and getattr(args, name) not in resolved.get(default, ())]
    if problems:
        raise ValueError("options that do not apply to video SFT:\n  " + "\n  ".join(problems))


def video_sft_config(config_class: type | None = None, **kwargs):
    """
    An `SFTConfig` (or `config_class`, e.g. `TarsierSFTConfig`) ready for `TarsierVideoCollator` under a plain
    `SFTTrainer`: `remove_unused_columns=False` (the collator needs the `messages` column, which the Trainer would
    drop) and `dataset_kwargs={"skip_prepare_dataset": True}` (TRL must not tokenise the rows: the collator does).

        args = video_sft_config(output_dir="runs/x", per_device_train_batch_size=2)
        SFTTrainer(model=model, args=args, train_dataset=rows, data_collator=collator, processing_class=processor)
    """
    if config_class is None:
        from trl import SFTConfig as config_class
    if kwargs.get("remove_unused_columns", False):
        raise ValueError("video_sft_config: remove_unused_columns=True would drop the `messages` column")
    dataset_kwargs = dict(kwargs.pop("dataset_kwargs", None) or {})
    if dataset_kwargs.get("skip_prepare_dataset") is False:
        raise ValueError("video_sft_config: skip_prepare_dataset=False would let TRL tokenise the rows as text")
    dataset_kwargs["skip_prepare_dataset"] = True
    kwargs["remove_unused_columns"] = False
    args = config_class(dataset_kwargs=dataset_kwargs, **kwargs)
    check_sft_config(args)
    return args
