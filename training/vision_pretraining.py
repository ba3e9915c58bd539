"""Stage 0: pre-train a CLIP vision tower contrastively on (frame, caption) pairs, through transformers' `Trainer`.

The paper never learns perception through the language loss: its frame encoder is a pretrained, frozen CLIP-ViT.
Where no pretrained tower fits (the tiny recipe's 64 px DREAM-S frames), this stage makes one the same way CLIP was
made: `CLIPModel`'s symmetric contrastive loss between a vision tower and a small text tower, here on single frames
and their captions ("a medium red triangle pointing up at the upper left"). The vision half is saved as an ordinary
`clip_vision_model` folder, which `train_sft.py --vision_model FOLDER` loads into a Tarsier.

    python -m training.vision_pretraining --config recipes/tiny/stage0.yaml

Data: a JSONL file of `{"video": path, "frame": index, "caption": text}` rows (paths relative to `--video_root`),
e.g. DREAM-S's `frames.jsonl`. Every video is decoded once with the repo's PyAV reader and its frames are kept in
memory (the tiny recipe's 16,000 frames of 64 px take 200 MB); pixels go through the same resize and normalisation
as `TarsierProcessor`, so stage 1 sees exactly the inputs stage 0 was trained on.
"""

from __future__ import annotations

import json
import logging
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoTokenizer,
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    Trainer,
    TrainingArguments,
)

from processing_tarsier import TarsierProcessor, load_video

logger = logging.getLogger(__name__)


@dataclass
class VisionPretrainingArguments:
    """What stage 0 trains on and the shape of its two towers (the training loop takes `TrainingArguments`)."""

    frames_file: str = field(metadata={"help": "JSONL of {video, frame, caption} rows."})
    vision_config: str = field(metadata={"help": "JSON file of the vision tower (model_type clip_vision_model)."})
    tokenizer: str = field(metadata={"help": "Folder or Hub id of the tokenizer of the captions (the LLM's own)."})
    video_root: str = field(default=".", metadata={"help": "Folder the rows' video paths are relative to."})
    text_hidden_size: int = field(default=128, metadata={"help": "Width of the text tower (discarded after stage 0)."})
    text_layers: int = field(default=2, metadata={"help": "Layers of the text tower."})
    projection_dim: int = field(default=128, metadata={"help": "Shared embedding size of the contrastive loss."})
    max_caption_tokens: int = field(default=64, metadata={"help": "Captions longer than this are an error."})


def read_frame_captions(frames_file: str, video_root: str = ".") -> tuple[np.ndarray, list[str]]:
    """Decode the frames a `{video, frame, caption}` JSONL names (each video once). Returns `(N, H, W, 3)` uint8
    frames and their `N` captions, in file order per video."""
    by_video: dict[str, list[tuple[int, str]]] = defaultdict(list)
    with open(frames_file, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                by_video[row["video"]].append((int(row["frame"]), str(row["caption"])))
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{frames_file}:{number}: expected a {{video, frame, caption}} object ({error})") from None
    if not by_video:
        raise ValueError(f"{frames_file}: no rows")
    frames, captions = [], []
    for video, items in by_video.items():
        frames.append(load_video(Path(video_root) / video, indices=[frame for frame, _ in items]).frames)
        captions.extend(caption for _, caption in items)
    return np.concatenate(frames), captions


class FrameCaptionDataset(torch.utils.data.Dataset):
    """Frames `(N, H, W, 3)` uint8 with their captions as ids of a compact caption vocabulary; item `i` is
    `(frame, ids)`.

    Captions are tokenized with the LLM's tokenizer, and the text tower's vocabulary is only the tokens the captions
    use (a few dozen instead of ~49k rows: the text tower is thrown away after stage 0, and a full-size embedding
    table would cost more per step than the vision tower). Id 0 is padding and id 1 ends every caption (where CLIP's
    text tower pools).
    """

    PAD, EOS = 0, 1

    def __init__(self, frames: np.ndarray, captions: list[str], tokenizer, max_tokens: int = 64):
        if len(frames) != len(captions):
            raise ValueError(f"got {len(frames)} frames but {len(captions)} captions")
        tokenized = tokenizer(list(captions), add_special_tokens=False)["input_ids"]
        self.vocabulary = {token: index for index, token in enumerate(sorted({t for ids in tokenized for t in ids}), 2)}
        self.frames, self.ids = frames, []
        for number, (caption, ids) in enumerate(zip(captions, tokenized)):
            if len(ids) + 1 > max_tokens:
                raise ValueError(f"caption {number} has {len(ids) + 1} tokens, more than {max_tokens}: {caption!r}")
            self.ids.append([self.vocabulary[t] for t in ids] + [self.EOS])

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary) + 2

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        return self.frames[index], self.ids[index]


class FrameCaptionCollator:
    """`[(frame, ids)]` -> `pixel_values (B, 3, S, S)`, right-padded `input_ids` / `attention_mask (B, L)`."""

    def __init__(self, processor: TarsierProcessor, pad_token_id: int):
        self.processor, self.pad_token_id = processor, pad_token_id

    def __call__(self, items):
        frames, ids = zip(*items)
        length = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), length), dtype=torch.long)
        for row, x in enumerate(ids):
            input_ids[row, : len(x)] = torch.tensor(x)
            attention_mask[row, : len(x)] = 1
        return {"pixel_values": self.processor.preprocess_frames(np.stack(frames)), "input_ids": input_ids,
                "attention_mask": attention_mask, "return_loss": True}


def build_clip(args: VisionPretrainingArguments, vocab_size: int, eos_token_id: int) -> CLIPModel:
    """A randomly initialised `CLIPModel` whose vision half is `args.vision_config`."""
    vision = json.loads(Path(args.vision_config).read_text(encoding="utf-8"))
    if vision.get("model_type") != "clip_vision_model":
        raise ValueError(f"{args.vision_config}: stage 0 trains a CLIP tower (model_type clip_vision_model)")
    vision_config = CLIPVisionConfig(**{k: v for k, v in vision.items() if k != "model_type"})
    text_config = {
        "vocab_size": vocab_size, "hidden_size": args.text_hidden_size, "intermediate_size": 4 * args.text_hidden_size,
        "num_hidden_layers": args.text_layers, "num_attention_heads": max(1, args.text_hidden_size // 64),
        "max_position_embeddings": args.max_caption_tokens, "eos_token_id": eos_token_id, "pad_token_id": 0,
        "bos_token_id": eos_token_id,
    }
    config = CLIPConfig(text_config=text_config, vision_config=vision_config.to_dict(),
                        projection_dim=args.projection_dim)
    return CLIPModel(config)


def save_vision_tower(clip: CLIPModel, output_dir: str | Path) -> Path:
    """Write the vision half (a `CLIPVisionModel`: config `clip_vision_model` + safetensors) and return its path."""
    clip.vision_model.save_pretrained(output_dir)
    return Path(output_dir)


def pretrain_vision_tower(
    frames: np.ndarray, captions: list[str], args: VisionPretrainingArguments, training_args: TrainingArguments
) -> Path:
    """Train a fresh `CLIPModel` on `(frames, captions)` with `Trainer` and save its vision half to
    `training_args.output_dir`."""
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    vision = json.loads(Path(args.vision_config).read_text(encoding="utf-8"))
    processor = TarsierProcessor.from_parts(tokenizer, image_processor="clip", chat_template="chatml",
                                            image_size=vision["image_size"], patch_size=vision["patch_size"])
    dataset = FrameCaptionDataset(frames, captions, processor.tokenizer, args.max_caption_tokens)
    logger.info("stage 0: %d frames with captions, %d caption tokens", len(dataset), dataset.vocab_size)
    model = build_clip(args, dataset.vocab_size, dataset.EOS)
    training_args.remove_unused_columns = False  # the collator builds the batch; Trainer must not drop keys
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset,
                      data_collator=FrameCaptionCollator(processor, dataset.PAD))
    trainer.train()
    return save_vision_tower(trainer.model, training_args.output_dir)


def main(argv: list[str] | None = None) -> int:
    from trl import TrlParser  # YAML config (`--config`) with CLI overrides, as train_sft.py

    parser = TrlParser((VisionPretrainingArguments, TrainingArguments))
    args, training_args = parser.parse_args_and_config(args=argv)
    logging.basicConfig(level=logging.INFO)
    frames, captions = read_frame_captions(args.frames_file, args.video_root)
    folder = pretrain_vision_tower(frames, captions, args, training_args)
    print(f"vision tower saved to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
