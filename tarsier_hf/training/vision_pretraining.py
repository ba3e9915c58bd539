"""Stage 0: pre-train a CLIP vision tower on single frames and the facts they show, through transformers' `Trainer`.

The paper never learns perception through the language loss: its frame encoder is a pretrained, frozen CLIP-ViT.
Where no pretrained tower fits (the tiny recipe's 96 px DREAM-S frames), this stage makes one: transformers'
`CLIPForImageClassification` (a CLIP vision tower whose mean-pooled patch features feed a linear head) trained
with its multi-label loss (`problem_type="multi_label_classification"`, binary cross-entropy per label) on every
training frame's facts, e.g. `["red triangle", "red medium", "red row upper", "red column left", "cells medium"]`.
The tower is then saved as an ordinary `clip_vision_model` folder, which `train_sft.py --vision_model FOLDER` loads
into a Tarsier; the head is thrown away. Its patch features are what the LM reads, and by construction their mean
holds every fact of the frame linearly.

    python -m tarsier_hf.training.vision_pretraining --config recipes/tiny/stage0.yaml

Data: a JSONL file of `{"video": path, "frame": index, "labels": [str, ...]}` rows (paths relative to
`--video_root`), e.g. DREAM-S's `stage0.jsonl`. Every video is decoded once with the repo's PyAV reader and the
frames go once through `video_processing_tarsier.preprocess_frames` with a CLIP image processor (the tiny recipe's
16,000 frames of 96 px take 1.8 GB as float32 pixels), so stage 1 sees exactly the inputs stage 0 was trained on.

Measured alternative (docs/tiny_recipe.md): CLIP's contrastive loss against a small text tower on the frames'
captions learnt colour and size in the same budget, but neither shape nor position (linear probes at chance).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import (CLIPConfig, CLIPForImageClassification, CLIPVisionConfig, Trainer, TrainingArguments,
                          set_seed)

from media_loading_tarsier import load_video
from video_processing_tarsier import build_image_processor, preprocess_frames
from tarsier_hf.cli import help_text
from tarsier_hf.jsonl import read_jsonl_objects

logger = logging.getLogger(__name__)


@dataclass
class VisionPretrainingArguments:
    """What stage 0 trains on and the tower it trains (the training loop takes `TrainingArguments`)."""

    frames_file: str = field(metadata={"help": "JSONL of {video, frame, labels} rows."})
    vision_config: str = field(metadata={"help": "JSON file of the vision tower (model_type clip_vision_model)."})
    video_root: str = field(default=".", metadata={"help": "Folder the rows' video paths are relative to."})
    resize_mode: str = field(default="stretch", metadata={"help": "TarsierProcessor resize mode of the frames."})


def read_frame_labels(frames_file: str, video_root: str = ".") -> tuple[np.ndarray, list[list[str]]]:
    """Decode the frames a `{video, frame, labels}` JSONL names (each video once). Returns `(N, H, W, 3)` uint8
    frames and their `N` label lists, in file order per video."""
    by_video: dict[str, list[tuple[int, list[str]]]] = defaultdict(list)
    for number, row in read_jsonl_objects(frames_file):
        try:
            labels = row["labels"]
            if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
                raise TypeError("labels must be a list of strings")
            by_video[row["video"]].append((int(row["frame"]), labels))
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{frames_file}:{number}: expected a {{video, frame, labels}} object ({error})") from None
    if not by_video:
        raise ValueError(f"{frames_file}: no rows")
    frames, labels = [], []
    for video, items in by_video.items():
        frames.append(load_video(Path(video_root) / video, indices=[frame for frame, _ in items]).frames)
        labels.extend(item_labels for _, item_labels in items)
    return np.concatenate(frames), labels


class FrameLabelDataset(torch.utils.data.Dataset):
    """Pixels `(N, 3, S, S)` with multi-hot targets over `label_names`; item `i` is
    `{"pixel_values": (3, S, S), "labels": (L,)}`, which transformers' default collator stacks."""

    def __init__(self, pixel_values: torch.Tensor, labels: list[list[str]], label_names: list[str] | None = None):
        if len(pixel_values) != len(labels):
            raise ValueError(f"got {len(pixel_values)} frames but {len(labels)} label lists")
        self.label_names = label_names or sorted({name for names in labels for name in names})
        index = {name: i for i, name in enumerate(self.label_names)}
        self.pixel_values = pixel_values
        self.targets = torch.zeros((len(labels), len(self.label_names)))
        for row, names in enumerate(labels):
            self.targets[row, [index[name] for name in names]] = 1.0

    def __len__(self) -> int:
        return len(self.pixel_values)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixel_values[i], "labels": self.targets[i]}


def frames_to_pixels(frames: np.ndarray, image_size: int, resize_mode: str = "stretch", chunk: int = 1024):
    """`(N, H, W, 3)` uint8 -> `(N, 3, S, S)` float32 through `preprocess_frames` with a CLIP image processor of
    side `image_size`: the pixels a Tarsier with this tower computes for the same frames. Done once, before
    training (each frame is processed on its own, so the result does not depend on the chunking)."""
    processor = build_image_processor("clip", image_size)
    return torch.cat([preprocess_frames(frames[i : i + chunk], processor, resize_mode)
                      for i in range(0, len(frames), chunk)])


def build_classifier(vision_config_file: str, label_names: list[str]) -> CLIPForImageClassification:
    """A randomly initialised CLIP tower of `vision_config_file` with a multi-label head over `label_names`."""
    vision = json.loads(Path(vision_config_file).read_text(encoding="utf-8"))
    if vision.get("model_type") != "clip_vision_model":
        raise ValueError(f"{vision_config_file}: stage 0 trains a CLIP tower (model_type clip_vision_model)")
    vision_config = CLIPVisionConfig(**{k: v for k, v in vision.items() if k != "model_type"})
    config = CLIPConfig(vision_config=vision_config.to_dict(), problem_type="multi_label_classification",
                        id2label=dict(enumerate(label_names)), label2id={n: i for i, n in enumerate(label_names)})
    return CLIPForImageClassification(config)


def save_vision_tower(model: CLIPForImageClassification, output_dir: str | Path) -> Path:
    """Write the vision tower (a `CLIPVisionModel`: config `clip_vision_model` + safetensors) and return its path."""
    model.vision_model.save_pretrained(output_dir)
    return Path(output_dir)


def pretrain_vision_tower(
    frames: np.ndarray, labels: list[list[str]], args: VisionPretrainingArguments, training_args: TrainingArguments
) -> Path:
    """Train a fresh tower on `(frames, labels)` with `Trainer` and save it to `training_args.output_dir`."""
    label_names = sorted({name for names in labels for name in names})
    set_seed(training_args.seed)  # the tower's random init too: Trainer seeds only after the model exists
    model = build_classifier(args.vision_config, label_names)
    pixels = frames_to_pixels(frames, model.config.vision_config.image_size, args.resize_mode)
    dataset = FrameLabelDataset(pixels, labels, label_names)
    logger.info("stage 0: %d frames, %d distinct labels", len(dataset), len(label_names))
    training_args.remove_unused_columns = False  # a plain torch dataset: there are no columns to drop
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset)
    trainer.train()
    return save_vision_tower(trainer.model, training_args.output_dir)


def main(argv: list[str] | None = None) -> int:
    from trl import TrlParser  # YAML config (`--config`) with CLI overrides, as train_sft.py

    parser = TrlParser((VisionPretrainingArguments, TrainingArguments), **help_text(
        "Pre-train a CLIP vision tower on single video frames and their facts (stage 0 of the tiny recipe) and save "
        "it as a clip_vision_model folder in --output_dir; --config YAML sets any option below.",
        "tarsier-pretrain-vision --config recipes/tiny/stage0.yaml",
        usage="%(prog)s [--config YAML] --frames_file FILE --vision_config JSON --output_dir DIR [options]"))
    args, training_args = parser.parse_args_and_config(args=argv)
    logging.basicConfig(level=logging.INFO)
    frames, labels = read_frame_labels(args.frames_file, args.video_root)
    folder = pretrain_vision_tower(frames, labels, args, training_args)
    print(f"vision tower saved to {folder}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
