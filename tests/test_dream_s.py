"""DREAM-S: determinism, real decodable videos, events visible in the pixels, exact grammar parsing, splits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from tarsier_hf.dream_s import (
    BuildConfig,
    ClipSpec,
    EventSpec,
    ShapeSpec,
    build_dataset,
    corpus_event_scores,
    corpus_event_scores_by,
    event_scores,
    parse_description,
    parse_events,
)
from tarsier_hf.dream_s.grammar import frame_labels
from tarsier_hf.dream_s.render import PAN_SPAN, compute_boxes, compute_tracks, render_frames
from tarsier_hf.dream_s.scene import COLLIDE_PUSH, GRID, MOVE_DISTANCE, event_triples, sample_clip
from tarsier_hf.dream_s.vocab import BACKGROUNDS, CAMERA_MOTIONS, COLOURS
from tarsier_hf.dream_s.video_writer import write_video

REPO = Path(__file__).resolve().parents[1]
STAGE1 = {"caption", "action", "mcqa", "qa", "boxes"}
STAGE2 = {"describe_detailed", "describe_short", "describe_camera"}


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


_PALETTE = np.array(list(COLOURS.values()) + [c for pair in BACKGROUNDS for c in pair], dtype=np.float64)


def _colour_mask(frames: np.ndarray, colour: str, tol: float = 60.0) -> np.ndarray:
    """`(T, H, W)` pixels whose nearest palette colour (shape colours and backgrounds) is `colour`, within `tol`."""
    dist = np.sqrt(((frames.astype(np.float64)[..., None, :] - _PALETTE) ** 2).sum(-1))
    return (dist.argmin(-1) == list(COLOURS).index(colour)) & (dist.min(-1) < tol)


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def _frame_at(clip: ClipSpec, t: float) -> int:
    return int(round(t * (clip.num_frames - 1)))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dream_s") / "data"
    build_dataset(BuildConfig(out=str(out), seed=3, num_train=40, num_test=12), progress=False)
    return out


def test_build_is_deterministic_and_worker_independent(built, tmp_path):
    again = tmp_path / "again"
    build_dataset(BuildConfig(out=str(again), seed=3, num_train=40, num_test=12, num_workers=2), progress=False)
    for name in ("stage1.jsonl", "stage2.jsonl", "test.jsonl", "clips_train.jsonl", "clips_test.jsonl"):
        assert (built / name).read_bytes() == (again / name).read_bytes(), name
    info_a, info_b = json.loads((built / "info.json").read_text()), json.loads((again / "info.json").read_text())
    assert info_a["heldout_combinations"] == info_b["heldout_combinations"]
    for split in ("train", "test"):
        for video in sorted((built / "videos" / split).glob("*.mp4")):
            assert np.array_equal(_decode(video), _decode(again / "videos" / split / video.name)), video.name

    other = tmp_path / "other_seed"
    build_dataset(BuildConfig(out=str(other), seed=4, num_train=4, num_test=0), progress=False)
    first = [r["descriptions"]["detailed"] for r in _read_jsonl(built / "clips_train.jsonl")[:4]]
    assert first != [r["descriptions"]["detailed"] for r in _read_jsonl(other / "clips_train.jsonl")]


def test_videos_are_lossless_so_pixels_follow_from_the_seed_alone(built):
    # x264's output bytes for the same frames were seen to differ between encodes on a loaded machine; lossless
    # (crf 0) they still may, but every decoder returns exactly the rendered frames after the one colour conversion
    # the writer makes (RGB -> yuv420p -> RGB, swscale), so the pixels depend on the seed alone.
    for record in _read_jsonl(built / "clips_train.jsonl")[:6] + _read_jsonl(built / "clips_test.jsonl")[:3]:
        clip = ClipSpec.from_dict(record["spec"])
        expected = np.stack([av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")
                             .to_ndarray(format="rgb24") for frame in render_frames(clip, supersample=BuildConfig.supersample)])
        assert np.array_equal(_decode(built / record["video"]), expected), record["video"]


def test_videos_decode_with_right_frames_and_size(built):
    videos = sorted((built / "videos").rglob("*.mp4"))
    assert len(videos) == 52
    for video in videos[::5]:
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264"
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert len(frames) == 16
        assert frames[0].shape == (BuildConfig.size, BuildConfig.size, 3)


def test_rows_follow_the_documented_format(built):
    stage1, stage2, test = (_read_jsonl(built / f) for f in ("stage1.jsonl", "stage2.jsonl", "test.jsonl"))
    assert {r["task"] for r in stage1} == STAGE1 and len(stage1) == 5 * 40
    assert {r["task"] for r in stage2} == STAGE2 and len(stage2) == 3 * 40
    assert len(test) == 12
    for row in stage1 + stage2 + test:
        user, assistant = row["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert user["content"][0]["type"] == "video" and (built / user["content"][0]["path"]).is_file()
        assert user["content"][1]["type"] == "text" and user["content"][1]["text"].strip()
        assert assistant["content"][0]["text"].strip()
        assert row["source"] == f"dream_s/{row['task']}" and row["idx"]
    assert len({r["idx"] for r in stage1 + stage2 + test}) == len(stage1) + len(stage2) + len(test)
    prompts = {task: {r["messages"][0]["content"][1]["text"] for r in stage2 if r["task"] == task} for task in STAGE2}
    assert all(len(p) >= 2 for p in prompts.values())  # drawn from a pool
    assert not (prompts["describe_detailed"] & prompts["describe_short"]) and not (prompts["describe_short"] & prompts["describe_camera"])
    for row in test:
        assert row["reference"] == row["messages"][1]["content"][0]["text"]
        assert row["n_events"] == len(row["events"]) and [e["order"] for e in row["events"]] == list(range(1, row["n_events"] + 1))
        assert 1 <= row["n_subjects"] <= 3 and row["n_shots"] in (1, 2)


def test_task_sources_set_the_stage2_mix_through_source_weights(built):
    """The recipe's stage-2 mix (recipes/tiny/stage2.yaml: `source_weights`) is train_sft.py's real re-sampling."""
    from collections import Counter

    from tarsier_hf.training.conversation_dataset import ConversationDataset
    from tarsier_hf.training.dataset_spec import DatasetSpec

    spec = DatasetSpec(str(built / "stage2.jsonl"), str(built), "train")
    plain = ConversationDataset([spec], seed=0)
    mixed = ConversationDataset([spec], seed=0, source_weights={"dream_s/describe_camera": 0.25,
                                                                "dream_s/describe_short": 2.0})
    tasks = Counter(mixed[i]["task"] for i in range(len(mixed)))
    assert len(plain) == 3 * 40
    assert tasks == {"describe_detailed": 40, "describe_short": 80, "describe_camera": 10}
    with pytest.raises(ValueError, match="unknown sources"):
        ConversationDataset([spec], seed=0, source_weights={"dream_s": 0.5})


def test_parser_inverts_every_generated_description(built):
    records = _read_jsonl(built / "clips_train.jsonl") + _read_jsonl(built / "clips_test.jsonl")
    scores = []
    for record in records:
        gt = record["events"]
        for kind in ("detailed", "short"):
            parsed = parse_description(record["descriptions"][kind])
            assert parsed.events == gt and parsed.unmatched == [], record["descriptions"][kind]
        detailed = parse_description(record["descriptions"]["detailed"])
        camera = parse_description(record["descriptions"]["camera"])
        for parsed in (detailed, camera):
            assert parsed.camera == record["camera"] and parsed.n_cuts == record["n_shots"] - 1
        assert sorted(detailed.initial) == sorted(s for s, v in zip(record["shapes"], record["spec"]["shapes"]) if v["visible_at_start"])
        messy = "  " + record["descriptions"]["detailed"].upper().replace(" ", "   \n ")
        assert parse_events(messy) == gt
        scores.append(event_scores(record["descriptions"]["detailed"], gt))
        assert scores[-1]["f1"] == 1.0
    assert corpus_event_scores(scores) == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "n": len(records)}


def test_event_scores_penalise_perturbed_and_unrelated_text(built):
    records = [r for r in _read_jsonl(built / "clips_train.jsonl") if len(r["events"]) >= 3]
    assert records
    record = records[0]
    gt, short = record["events"], record["descriptions"]["short"]
    clauses = short[:-1].split(", then ")
    swapped = ", then ".join([clauses[1], clauses[0]] + clauses[2:]) + "."
    order_aware, order_free = event_scores(swapped, gt), event_scores(swapped, gt, ordered=False)
    assert order_free["f1"] == 1.0 and order_aware["n_matched"] == len(gt) - 1 and order_aware["f1"] < 1.0
    dropped = event_scores(", then ".join(clauses[:-1]) + ".", gt)
    assert dropped["precision"] == 1.0 and dropped["recall"] == pytest.approx((len(gt) - 1) / len(gt))
    extra = event_scores(short + " Then, the " + gt[0]["subject"] + " disappears and explodes. A cat sings.", gt)
    assert extra["recall"] == 1.0 and extra["unmatched"]  # out-of-grammar clauses are reported, never fatal
    unrelated = event_scores("A man walks his dog in the park while it rains.", gt)
    assert unrelated["f1"] == 0.0 and unrelated["n_pred"] == 0 and unrelated["unmatched"]
    for junk in ("", "   ", ". , ; then, and then", None, "the red circle moves sideways"):
        assert event_scores(junk, gt)["f1"] == 0.0
    assert event_scores("", [])["f1"] == 1.0
    by_events = corpus_event_scores_by([order_aware, unrelated, dropped], [3, 1, 3])
    assert list(by_events) == [1, 3] and by_events[1]["f1"] == 0.0 and by_events[3]["n"] == 2
    assert by_events[3]["recall"] == pytest.approx((order_aware["recall"] + dropped["recall"]) / 2)
    with pytest.raises(ValueError, match=r"gt_events\[0\]"):
        event_scores("x", [{"action": "grow"}])


def test_word_classes_cover_every_content_word_of_real_descriptions(built, smollm2_dir):
    """Tokenized with the real SmolLM2 tokenizer, each subject's colour and shape, each event's verb and the camera
    motion land in their class; the class counts follow from the ground truth."""
    from transformers import AutoTokenizer

    from tarsier_hf.dream_s import word_classes

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    for record in _read_jsonl(built / "clips_train.jsonl")[:40]:
        text = record["descriptions"]["detailed"]
        tokens = [tokenizer.decode([i]) for i in tokenizer(text)["input_ids"]]
        classes = word_classes(tokens)
        # whole words and their classes (a word split into pieces carries one class)
        words, word_kinds = [], []
        for token, kind in zip(tokens, classes):
            if token[:1].isalpha() and words and words[-1][-1:].isalpha():
                assert kind == word_kinds[-1]
                words[-1] += token
            else:
                words.append(token.strip().strip(".,").lower())
                word_kinds.append(kind)
        for word, kind in zip(words, word_kinds):
            if word in ("red", "green", "blue", "yellow", "purple", "orange", "pink"):
                assert kind == "colour"
            if word in ("circle", "square", "triangle"):
                assert kind == "shape"
        verbs = [w for w, k in zip(words, word_kinds) if k == "action" and w not in ("left", "right", "up", "down",
                                                                                  "bigger", "bounce", "apart")]
        assert len(verbs) == len(record["events"]), (text, verbs)
        camera = [w for w, k in zip(words, word_kinds) if k == "camera"]
        motion = {"static": ["stays", "still"], "pan left": ["pans", "left"], "pan right": ["pans", "right"],
                  "zoom in": ["zooms", "in"], "zoom out": ["zooms", "out"]}[record["camera"]]
        cut = ["cuts", "shot"] if record["n_shots"] == 2 else []
        assert camera == cut + ["camera"] + motion, (text, camera)


def test_test_split_holds_only_unseen_combinations(built):
    info = json.loads((built / "info.json").read_text())
    heldout = {tuple(t) for t in info["heldout_combinations"]}
    assert heldout and len(heldout) < info["num_combinations"]
    train = {tuple(t) for r in _read_jsonl(built / "clips_train.jsonl") for t in r["combinations"]}
    assert not train & heldout
    for record in _read_jsonl(built / "clips_test.jsonl"):
        clip = ClipSpec.from_dict(record["spec"])
        assert {tuple(t) for e in clip.events for t in event_triples(clip, e)} & heldout, record["idx"]
    # held-out triples recombine parts the training split does show
    colours, shapes, actions = {t[0] for t in train}, {t[1] for t in train}, {t[2] for t in train}
    assert all(c in colours and s in shapes and a in actions for c, s, a in heldout)


def _write_and_decode(clip: ClipSpec, tmp_path: Path) -> np.ndarray:
    path = write_video(tmp_path / "clip.mp4", render_frames(clip), fps=clip.fps, max_b_frames=0)
    frames = _decode(Path(path))
    assert frames.shape == (clip.num_frames, clip.size, clip.size, 3)
    return frames


def test_object_events_are_visible_in_decoded_pixels(tmp_path):
    clip = ClipSpec(
        shapes=[ShapeSpec("red", "circle", 0.3, 0.35, 0.09), ShapeSpec("blue", "square", 0.7, 0.7, 0.08, visible_at_start=False)],
        events=[
            EventSpec(0, "move right", delta=(MOVE_DISTANCE, 0.0)),
            EventSpec(1, "appear"),
            EventSpec(0, "grow"),
            EventSpec(1, "change colour", colour="green"),
        ],
        num_frames=24,
        size=96,
    )
    frames = _write_and_decode(clip, tmp_path)
    red, blue, green = (_colour_mask(frames, c) for c in ("red", "blue", "green"))
    window = [tuple(_frame_at(clip, t) for t in clip.event_window(k)) for k in range(4)]
    # move right: the red centroid travels MOVE_DISTANCE of the frame width to the right, and not vertically
    (a, b) = window[0]
    shift = _centroid(red[b]) - _centroid(red[a])
    assert shift[0] == pytest.approx(MOVE_DISTANCE * clip.size, abs=2.0) and abs(shift[1]) < 1.0
    # appear: no blue pixel before, a full square after
    (a, b) = window[1]
    assert blue[a].sum() == 0 and blue[b].sum() > 0.8 * (2 * 0.886 * 0.08 * clip.size) ** 2
    # grow: the red area grows by GROW_FACTOR squared (1.5 ** 2)
    (a, b) = window[2]
    assert red[b].sum() / red[a].sum() == pytest.approx(2.25, rel=0.15)
    # change colour: the blue pixels become green
    (a, b) = window[3]
    assert blue[a].sum() > 100 and green[a].sum() == 0 and blue[b].sum() == 0 and green[b].sum() > 100


def test_collision_and_camera_pan_are_visible_in_decoded_pixels(tmp_path):
    clip = ClipSpec(
        shapes=[ShapeSpec("yellow", "circle", 0.25, 0.5, 0.08), ShapeSpec("purple", "triangle", 0.65, 0.5, 0.08)],
        events=[EventSpec(0, "collide", target=1, delta=(0.24, 0.0), push=(COLLIDE_PUSH, 0.0))],
        camera="pan left",
        num_frames=24,
        size=96,
    )
    frames = _write_and_decode(clip, tmp_path)
    yellow, purple = _colour_mask(frames, "yellow"), _colour_mask(frames, "purple")
    x_yellow = np.array([_centroid(m)[0] for m in yellow])
    x_purple = np.array([_centroid(m)[0] for m in purple])
    pan = np.linspace(0, 1, clip.num_frames) * PAN_SPAN * clip.size  # a left pan drifts the scene right
    # in world terms: the yellow circle approaches then bounces back; the triangle is pushed away to the right
    yellow_world, purple_world = x_yellow - pan, x_purple - pan
    peak = int(np.argmax(yellow_world))
    assert 0 < peak < clip.num_frames - 1
    assert yellow_world[peak] - yellow_world[0] > 0.8 * 0.24 * clip.size
    assert yellow_world[peak] - yellow_world[-1] > 0.3 * 0.24 * clip.size
    assert purple_world[-1] - purple_world[0] == pytest.approx(COLLIDE_PUSH * clip.size, abs=2.5)
    assert abs(purple_world[peak] - purple_world[0]) < 2.0  # nothing moves the triangle before contact
    # the pan is visible on its own: the triangle drifts right while nothing moves it in the world
    assert x_purple[peak] - x_purple[0] == pytest.approx(pan[peak], abs=1.5)


def test_generated_moves_and_boxes_match_the_pixels(built):
    checked_moves = checked_boxes = 0
    for record in _read_jsonl(built / "clips_train.jsonl"):
        clip = ClipSpec.from_dict(record["spec"])
        frames = _decode(built / record["video"])
        boxes = compute_boxes(clip)
        for k, event in enumerate(record["events"]):
            if not event["action"].startswith("move") or clip.camera != "static" or clip.cut_after is not None:
                continue
            colour = event["subject"].split()[0]
            a, b = (_frame_at(clip, t) for t in clip.event_window(k))
            mask = _colour_mask(frames, colour)
            shift = _centroid(mask[b]) - _centroid(mask[a])
            expected = {"move left": (-1, 0), "move right": (1, 0), "move up": (0, -1), "move down": (0, 1)}[event["action"]]
            assert shift @ np.array(expected) > 0.8 * MOVE_DISTANCE * clip.size, (record["idx"], event)
            checked_moves += 1
        recoloured = {e.subject: e.colour for e in clip.events if e.action == "change colour"}
        for i, shape in enumerate(clip.shapes):
            for f in (0, clip.num_frames - 1):  # the still ends of the clip: no half-faded shape
                box = boxes[f, i]
                colour = recoloured.get(i, shape.colour) if f else shape.colour
                mask = _colour_mask(frames[f : f + 1], colour)[0]
                # a box exactly when the shape shows (a few stray edge pixels of blended colours aside)
                assert np.isnan(box).any() == (mask.sum() < 6), (record["idx"], shape.name, f)
                if mask.sum() < 6:
                    continue
                # nearly all of its colour lies in the box (padded by 2 px: x264's half-resolution chroma blurs
                # edges), the box is tight (the shape fills a good part of it) and centred on the colour
                px = np.arange(clip.size) + 0.5
                lo, hi = box[:2] * clip.size - 2, box[2:] * clip.size + 2
                in_box = ((px >= lo[1]) & (px <= hi[1]))[:, None] & ((px >= lo[0]) & (px <= hi[0]))[None, :]
                assert (mask & in_box).sum() >= 0.9 * mask.sum(), (record["idx"], shape.name, f)
                box_px = box * clip.size
                assert mask.sum() >= 0.2 * np.prod(box_px[2:] - box_px[:2]), (record["idx"], shape.name, f)
                centre, half = (box_px[:2] + box_px[2:]) / 2, (box_px[2:] - box_px[:2]) / 2
                assert np.all(np.abs(_centroid(mask & in_box) + 0.5 - centre) <= 0.5 * half), (record["idx"], shape.name, f)
                checked_boxes += 1
    assert checked_moves >= 3 and checked_boxes >= 20


def test_places_in_descriptions_match_the_pixels(built):
    # The detailed description says where each shape is in the first and in the last frame ("at the top left");
    # the place must be the cell of the 3x3 image grid that holds the shape's colour in the decoded video.
    cells = {(r, c): f"{row} {col}".replace("middle centre", "centre")
             for r, row in enumerate(("top", "middle", "bottom")) for c, col in enumerate(("left", "centre", "right"))}
    checked = 0
    for record in _read_jsonl(built / "clips_train.jsonl"):
        clip = ClipSpec.from_dict(record["spec"])
        frames = _decode(built / record["video"])
        parsed = parse_description(record["descriptions"]["detailed"])
        assert parsed.final_places is not None, record["descriptions"]["detailed"]
        recoloured = {clip.shapes[e.subject].name: e.colour for e in clip.events if e.action == "change colour"}
        for frame, places in ((0, parsed.places), (clip.num_frames - 1, parsed.final_places)):
            for name, place in places.items():
                colour = recoloured.get(name, name.split()[0]) if frame else name.split()[0]
                mask = _colour_mask(frames[frame : frame + 1], colour)[0]
                x, y = (_centroid(mask) + 0.5) / clip.size
                assert cells[(min(int(y * 3), 2), min(int(x * 3), 2))] == place, (record["idx"], name, frame)
                checked += 1
    assert checked >= 40


def test_cli_shows_progress_and_rejects_bad_options(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "tarsier_hf.dream_s", "--out", str(out), "--seed", "1", "--num-train", "3", "--num-test", "2"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "DREAM-S clips" in done.stderr and "5/5" in done.stderr  # the tqdm bar
    assert "3 train clips" in done.stdout
    assert len(_read_jsonl(out / "test.jsonl")) == 2 and len(_read_jsonl(out / "stage2.jsonl")) == 9
    bad = subprocess.run(cmd[:-6] + ["--size", "63"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--size" in bad.stderr
    with pytest.raises(ValueError, match="heldout-fraction"):
        build_dataset(BuildConfig(out=str(tmp_path / "x"), num_train=1, num_test=1, heldout_fraction=0.0), progress=False)


def test_first_frame_shows_nothing_of_the_camera_motion():
    """The single-frame ablation sees one frame: the first (the released sampling rule). Every camera motion starts
    from the rest pose, so that frame is pixel-identical whatever the motion, and the motion shows by the last."""
    base = dict(shapes=[ShapeSpec("red", "square", 0.5, 0.5, 0.08)], events=[EventSpec(0, "grow")], num_frames=8)
    renders = {camera: render_frames(ClipSpec(**base, camera=camera)) for camera in CAMERA_MOTIONS}
    for camera, frames in renders.items():
        assert np.array_equal(frames[0], renders["static"][0]), camera
        if camera != "static":
            assert np.abs(frames[-1].astype(int) - renders["static"][-1].astype(int)).mean() > 2.0, camera


def test_shapes_start_inside_one_patch_of_the_tiny_tower():
    """Legibility: the tiny recipe's tower sees 96 px frames as a 3 x 3 grid of 32 px patches; every shape starts at
    the centre of one grid cell, so at rest all of its pixels lie inside a single patch (decoded colour masks)."""
    tower = json.loads((REPO / "recipes" / "tiny" / "vision_tower.json").read_text())
    assert tower["image_size"] // tower["patch_size"] == GRID and tower["image_size"] == BuildConfig.size
    side = tower["patch_size"]
    rng = np.random.default_rng(3)
    for _ in range(40):
        clip = sample_clip(rng, split="any")
        frame = render_frames(clip)[0]
        for shape in clip.shapes:
            if not shape.visible_at_start:
                continue
            cell = (int(shape.y * GRID), int(shape.x * GRID))
            assert (shape.x * GRID) % 1 == pytest.approx(0.5) and (shape.y * GRID) % 1 == pytest.approx(0.5)
            mask = _colour_mask(frame[None], shape.colour)[0]
            ys, xs = np.nonzero(mask)
            assert len(ys) > 20, shape
            assert set(zip((ys // side).tolist(), (xs // side).tolist())) == {cell}, (shape, clip.camera)


def test_stage0_lists_a_seeded_subset_of_each_clips_frames(tmp_path):
    """Stage 0 learns more from fewer frames of more clips: `stage0_frames_per_clip` lists that many distinct frames
    of every train clip, the same ones on every build, and nonsense counts are refused by name."""
    rows = {}
    for run in ("a", "b"):
        build_dataset(BuildConfig(out=str(tmp_path / run), seed=4, num_train=3, num_test=1, stage0_frames_per_clip=4), progress=False)
        rows[run] = _read_jsonl(tmp_path / run / "stage0.jsonl")
    assert rows["a"] == rows["b"] and len(rows["a"]) == 3 * 4
    by_video: dict[str, list[int]] = {}
    for row in rows["a"]:
        by_video.setdefault(row["video"], []).append(row["frame"])
    assert len(by_video) == 3
    for frames in by_video.values():
        assert len(set(frames)) == 4 and all(0 <= f < 16 for f in frames)
    assert len({tuple(f) for f in by_video.values()}) > 1  # each clip draws its own frames
    for bad in (0, 17):
        with pytest.raises(ValueError, match="stage0-frames-per-clip"):
            BuildConfig(out=str(tmp_path / "c"), stage0_frames_per_clip=bad).validate()


def test_stage0_labels_name_each_shape_fact_with_and_without_its_colour():
    """Stage 0's frame facts: per shape with its colour ("red row top") and once more colour-free ("object row top"),
    so a fact a held-out colour never showed in training still has a trained label."""
    clip = ClipSpec(shapes=[ShapeSpec("red", "triangle", 1 / 6, 1 / 6, 0.08), ShapeSpec("blue", "circle", 5 / 6, 5 / 6, 0.08)],
                    events=[EventSpec(0, "move right", delta=(MOVE_DISTANCE, 0.0))], num_frames=8)
    tracks = compute_tracks(clip)
    first, last = frame_labels(clip, tracks, 0), frame_labels(clip, tracks, 7)
    for labels in (first, last):
        coloured = {label.split(" ", 1)[1] for label in labels if label.split(" ", 1)[0] in COLOURS}
        assert {label for label in labels if label.startswith("object ")} == {f"object {fact}" for fact in coloured}
    assert {"red triangle", "red row top", "red column left", "object triangle", "object circle", "object row top",
            "object row bottom", "object column left", "object column right"} <= set(first)
    # the move shows in both: the red triangle's column and the colour-free column facts
    assert "red column centre" in last and "object column centre" in last and "object column left" not in last
