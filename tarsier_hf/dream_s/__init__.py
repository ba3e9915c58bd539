"""DREAM-S: procedural synthetic motion videos with exact ground-truth events, for a tiny Tarsier recipe.

Each clip shows 1-3 coloured shapes (circle / square / triangle, distinct colours) on a checkerboard and 1-4
sequential events that no single frame reveals: move left / right / up / down, appear, disappear, grow,
shrink, rotate, change colour, collide (and bounce apart); the camera stays still, pans left / right or zooms
in / out, and a clip may cut once to another shot. Everything is drawn with numpy from a seed and encoded with
`tarsier_hf.dream_s.video_writer.write_video` (libx264). Descriptions come from a closed grammar
(`grammar.py`), so `parse_events` recovers the events of any description exactly and `event_scores` computes
AutoDQ-style precision / recall / F1 without an LLM judge (`metric.py`).

Build: `python -m tarsier_hf.dream_s --output_dir DIR --seed 0 --num-train 300 --num-test 60`
(options: `--num-frames 16 --size 64 --fps 8 --heldout-fraction 0.1 --num-workers 1 ...`).

Files under DIR (every path inside a row is relative to DIR):
- `videos/train/NNNNNN.mp4`, `videos/test/NNNNNN.mp4`
- `stage1.jsonl`: multi-task pre-training rows, one per task per train clip; `task` is `caption` (one-sentence
  description), `action` (action labels of one shape), `mcqa` (4-way multiple choice: which event happens /
  happens first / last, camera motion), `qa` (open-ended short answers), `boxes` (the tracking task: one
  shape's `[x1, y1, x2, y2]` box, 0-1 image coordinates, at 4 timestamps in seconds, or `absent`).
- `stage2.jsonl`: multi-grained descriptions, one per granularity per train clip; `task` is
  `describe_detailed`, `describe_short` or `describe_camera`, each with its own prompt pool.
- `test.jsonl`: one `describe_detailed` row per held-out clip with the fixed prompt "Describe the video in
  detail.". Every test clip shows at least one (colour, shape, action) combination that no train clip shows.
- `clips_train.jsonl`, `clips_test.jsonl`: per clip ground truth (events, all descriptions, camera, shots,
  per-frame boxes of every shape, combinations shown, and the full `spec` that re-renders it).
- `info.json`: options, row counts and the held-out combinations.

Row format (all JSONL rows):

    {"messages": [
        {"role": "user", "content": [{"type": "video", "path": "videos/train/000001.mp4"},
                                     {"type": "text", "text": "Describe the video in detail."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "At the start, there is a red circle at the top left. ..."}]}],
     "task": "caption|action|mcqa|qa|boxes|describe_detailed|describe_short|describe_camera",
     "source": "dream_s/describe_detailed", "idx": "dream_s/train/000001/detailed"}

`source` is `dream_s/<task>`: `train_sft.py --source_weights dream_s/describe_camera=0.25` re-samples one task.

Test rows add `"events": [{"subject": "red circle", "action": "move left", "object": null, "order": 1}, ...]`
(`object` is the new colour for `change colour`, the other shape for `collide`, else null), `"n_events"`,
`"n_subjects"`, `"n_shots"`, `"camera"` and `"reference"` (the detailed description, also the assistant turn).

Evaluation: `event_scores(prediction, row["events"])` per sample, then `corpus_event_scores(list_of_scores)`
(mean precision, mean recall, F1 of the means, as AutoDQ) or `corpus_event_scores_by(scores, n_events)`.
"""

from .build import BuildConfig, build_dataset, load_clip_spec
from .grammar import (
    ParsedDescription,
    camera_description,
    detailed_description,
    event_clause,
    parse_description,
    parse_events,
    short_description,
    word_classes,
)
from .metric import corpus_event_scores, corpus_event_scores_by, count_matches, event_scores
from .render import compute_boxes, compute_tracks, render_frames
from .scene import ClipSpec, EventSpec, ShapeSpec, heldout_combinations, sample_clip

__all__ = [
    "BuildConfig",
    "ClipSpec",
    "EventSpec",
    "ParsedDescription",
    "ShapeSpec",
    "build_dataset",
    "camera_description",
    "compute_boxes",
    "compute_tracks",
    "corpus_event_scores",
    "corpus_event_scores_by",
    "count_matches",
    "detailed_description",
    "event_clause",
    "event_scores",
    "heldout_combinations",
    "load_clip_spec",
    "parse_description",
    "parse_events",
    "render_frames",
    "sample_clip",
    "short_description",
    "word_classes",
]
