"""Linear probes of a stage-0 tower: how well the one feature per frame that stages 1-2 read carries each fact.

    python -m tarsier_hf.tiny_recipe.tower_probe --run-dir runs/tiny               # the run's stage-0 tower
    python -m tarsier_hf.tiny_recipe.tower_probe --run-dir runs/tiny --tower T     # another tower, same data

The feature is the one the LM gets: the tower's last hidden state with its patch grid average-pooled
(`vision_feature_pooling` over the whole grid = the mean of the patch tokens, which is also what stage 0's
`CLIPForImageClassification` head reads). For frames showing exactly one shape, a multinomial logistic regression
per fact (the shape's row, column, shape and colour, from `dream_s.grammar.frame_objects`) is fitted on the frames
of `--probe-train-clips` training clips and scored on every single-shape frame of the held-out test clips, which the
tower never saw. The probe accuracy of the row and column predicted a seed's event F1 (docs/tiny_recipe.md, v9).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import CLIPVisionModel, HfArgumentParser

from tarsier_hf.dream_s.build import load_clip_spec
from tarsier_hf.dream_s.grammar import frame_objects
from tarsier_hf.dream_s.render import compute_tracks
from tarsier_hf.jsonl import read_jsonl_objects
from media_loading_tarsier import load_video
from video_processing_tarsier import build_image_processor, preprocess_frames

FACTS = ("row", "column", "shape", "colour")


@dataclass
class TowerProbeArguments:
    """Command-line arguments of `python -m tarsier_hf.tiny_recipe.tower_probe`."""

    run_dir: str = field(metadata={"help": "A tiny-recipe output folder (its data/ and, by default, its stage0/)."})
    tower: str | None = field(default=None, metadata={"help": "A clip_vision_model folder (default: RUN_DIR/stage0)."})
    probe_train_clips: int = field(default=600, metadata={"help": "Training clips whose frames fit the probes."})
    steps: int = field(default=300, metadata={"help": "Full-batch Adam steps of each probe."})


def single_object_frames(data_dir: Path, split: str, max_clips: int | None) -> tuple[np.ndarray, list[dict]]:
    """Every frame of the first `max_clips` clips of `split` that shows exactly one shape: `(N, H, W, 3)` uint8
    frames and N records `{"video", "frame", "row", "column", "shape", "colour"}` (the shape's facts)."""
    frames, records = [], []
    for number, record in read_jsonl_objects(data_dir / f"clips_{split}.jsonl", ValueError):
        if max_clips is not None and number > max_clips:
            break
        clip = load_clip_spec(record)
        tracks = compute_tracks(clip)
        keep = [(f, objects[0]) for f in range(clip.num_frames)
                if len(objects := frame_objects(clip, tracks, f)) == 1]
        if not keep:
            continue
        frames.append(load_video(data_dir / record["video"], indices=[f for f, _ in keep]).frames)
        records += [{"video": record["video"], "frame": f, **{fact: obj[fact] for fact in FACTS}} for f, obj in keep]
    if not frames:
        raise ValueError(f"{data_dir / f'clips_{split}.jsonl'}: no frame shows exactly one shape")
    return np.concatenate(frames), records


@torch.no_grad()
def pooled_features(tower: CLIPVisionModel, frames: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """`(N, H, W, 3)` uint8 -> `(N, hidden)`: the mean of the last layer's patch tokens (the LM's frame feature)."""
    processor = build_image_processor("clip", tower.config.image_size)
    out = []
    for start in range(0, len(frames), batch_size):
        pixels = preprocess_frames(frames[start:start + batch_size], processor)
        out.append(tower(pixel_values=pixels).last_hidden_state[:, 1:].mean(dim=1))
    return torch.cat(out)


def probe_accuracy(train_x: torch.Tensor, train_y: list, test_x: torch.Tensor, test_y: list, steps: int) -> float:
    """Fit a softmax regression on standardised features; its accuracy on the test features."""
    names = sorted(set(train_y) | set(test_y))
    y_train = torch.tensor([names.index(v) for v in train_y])
    y_test = torch.tensor([names.index(v) for v in test_y])
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    generator = torch.Generator().manual_seed(0)
    weight = (0.01 * torch.randn(train_x.shape[1], len(names), generator=generator)).requires_grad_()
    bias = torch.zeros(len(names), requires_grad=True)
    optimiser = torch.optim.Adam([weight, bias], lr=0.05)
    for _ in range(steps):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(train_x @ weight + bias, y_train) + 1e-3 * weight.pow(2).sum()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        return float(((test_x @ weight + bias).argmax(1) == y_test).float().mean())


def probe_tower(run_dir: str, tower: str | None = None, probe_train_clips: int = 600, steps: int = 300) -> dict:
    """Held-out probe accuracy per fact: `{"row": ..., "column": ..., "shape": ..., "colour": ..., "n_train",
    "n_test", "tower"}`."""
    data_dir = Path(run_dir) / "data"
    tower_dir = Path(tower) if tower else Path(run_dir) / "stage0"
    if not (tower_dir / "config.json").is_file():
        raise FileNotFoundError(f"{tower_dir}: no clip_vision_model folder (config.json missing)")
    model = CLIPVisionModel.from_pretrained(tower_dir).eval()
    train_frames, train_records = single_object_frames(data_dir, "train", probe_train_clips)
    test_frames, test_records = single_object_frames(data_dir, "test", None)
    train_x, test_x = pooled_features(model, train_frames), pooled_features(model, test_frames)
    result = {fact: probe_accuracy(train_x, [r[fact] for r in train_records], test_x, [r[fact] for r in test_records],
                                   steps) for fact in FACTS}
    return {**result, "n_train": len(train_frames), "n_test": len(test_frames), "tower": str(tower_dir)}


def main(argv: list[str] | None = None) -> int:
    (args,) = HfArgumentParser(TowerProbeArguments).parse_args_into_dataclasses(args=argv)
    try:
        result = probe_tower(args.run_dir, args.tower, args.probe_train_clips, args.steps)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
