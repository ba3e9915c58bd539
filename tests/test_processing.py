"""TarsierProcessor: special tokens, exact token layout, batching, pixel order, assistant masks, resize modes and
the save -> AutoProcessor(trust_remote_code=True) round trip, with the real SmolLM2 tokenizer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

from tarsier_hf.dream_s.video_writer import coded_frames, write_video
from processing_tarsier import CHAT_TEMPLATES, SPECIAL_TOKENS, TarsierProcessor
from frame_sampling_tarsier import FpsSampling, RandomSegmentsSampling, UniformSampling
from media_loading_tarsier import load_video

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture
def processor(tokenizer):
    return TarsierProcessor.from_parts(tokenizer, "clip", chat_template="vicuna", frame_sampling=UniformSampling(4))


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    return Path(write_video(folder / "clip.mp4", coded_frames(30, 48, 64), gop_size=10))


def user_turn(*blocks, text="Describe the video."):
    return {"role": "user", "content": [*blocks, {"type": "text", "text": text}]}


def test_from_parts_adds_special_tokens_once(tokenizer):
    before = len(tokenizer)
    assert not any(t in tokenizer.get_vocab() for t in SPECIAL_TOKENS)
    processor = TarsierProcessor.from_parts(tokenizer, "clip")
    assert len(tokenizer) == before + 4
    ids = [processor.image_token_id, processor.video_token_id]
    ids += [processor.image_newline_token_id, processor.frame_end_token_id]
    assert ids == tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)) and len(set(ids)) == 4 and min(ids) >= before
    # Each special token is one token, never split, even glued to text.
    assert tokenizer("x<image_newline>y", add_special_tokens=False)["input_ids"][1] == processor.image_newline_token_id
    TarsierProcessor.from_parts(tokenizer, "siglip")
    assert len(tokenizer) == before + 4
    with pytest.raises(ValueError, match="lacks the special tokens"):
        from transformers import AutoTokenizer

        TarsierProcessor(processor.image_processor, AutoTokenizer.from_pretrained(tokenizer.name_or_path))


@pytest.mark.parametrize("separators", [True, False])
def test_exact_token_layout(tokenizer, clip, separators):
    processor = TarsierProcessor.from_parts(tokenizer, "clip", use_frame_separators=separators)
    side = 336 // 14
    row = [processor.image_token_id] * side + [processor.image_newline_token_id]
    frame = row * side + [processor.frame_end_token_id]
    if not separators:
        frame = [processor.image_token_id] * (side * side)
    assert processor.frame_token_ids() == frame
    assert processor.tokens_per_frame == (601 if separators else 576)
    out = processor(
        text="Look: <video> and <image> end", videos=[str(clip)], images=[np.zeros((20, 30, 3), np.uint8)], num_frames=3
    )
    prefix = tokenizer("Look: ", add_special_tokens=False)["input_ids"]
    middle = tokenizer(" and ", add_special_tokens=False)["input_ids"]
    suffix = tokenizer(" end", add_special_tokens=False)["input_ids"]
    assert out["input_ids"][0].tolist() == prefix + frame * 3 + middle + frame + suffix
    assert out["num_frames"].tolist() == [4]
    assert out["pixel_values"].shape == (4, 3, 336, 336) and out["pixel_values"].dtype == torch.float32


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_batched_conversations_frame_order_and_counts(processor, clip, padding_side):
    video_array = np.stack(coded_frames(12, 40, 40))
    image = np.full((50, 80, 3), 200, np.uint8)
    conversations = [
        [user_turn({"type": "video", "path": str(clip)}, {"type": "image", "image": Image.fromarray(image)})],
        [user_turn(text="Hello, no visuals here.")],
        [
            user_turn(
                {"type": "video", "video": video_array},
                {"type": "video", "video": [Image.fromarray(f) for f in video_array[:5]]},
            )
        ],
    ]
    out = processor.apply_chat_template(
        conversations, add_generation_prompt=True, tokenize=True, return_dict=True,
        processor_kwargs={"num_frames": 4, "padding_side": padding_side},
    )
    assert out["num_frames"].tolist() == [5, 0, 8]
    assert out["pixel_values"].shape == (13, 3, 336, 336)
    expected_frames = [
        *load_video(clip, UniformSampling(4)).frames,
        image,
        *video_array[UniformSampling(4).indices(12)],
        *video_array[:5][UniformSampling(4).indices(5)],
    ]
    torch.testing.assert_close(out["pixel_values"], processor.preprocess_frames(expected_frames))
    ids, mask = out["input_ids"], out["attention_mask"]
    for row, frames in enumerate([5, 0, 8]):
        assert (ids[row] == processor.image_token_id).sum() == frames * 576
        assert (ids[row] == processor.frame_end_token_id).sum() == frames
    lengths = mask.sum(1)
    assert lengths[1] < ids.shape[1]
    pad_at = 0 if padding_side == "left" else -1
    assert mask[1, pad_at] == 0 and ids[1, pad_at] == processor.tokenizer.pad_token_id


@pytest.mark.parametrize("template", list(CHAT_TEMPLATES))
def test_assistant_masks_cover_only_assistant_turns(tokenizer, clip, template):
    processor = TarsierProcessor.from_parts(tokenizer, "clip", chat_template=template, frame_sampling=UniformSampling(2))
    conversation = [
        {"role": "system", "content": "You describe videos."},
        user_turn({"type": "video", "path": str(clip)}),
        {"role": "assistant", "content": [{"type": "text", "text": "A code flickers."}]},
        {"role": "user", "content": [{"type": "text", "text": "And then?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "It stops."}]},
    ]
    out = processor.apply_chat_template(
        conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, masks = out["input_ids"][0], out["assistant_masks"][0]
    assert isinstance(masks, torch.Tensor) and masks.shape == ids.shape
    layout_ids = [processor.image_token_id, processor.image_newline_token_id, processor.frame_end_token_id]
    visual = torch.isin(ids, torch.tensor(layout_ids))
    assert visual.sum() == 2 * 601 and not masks[visual].any()
    masked_text = tokenizer.decode(ids[masks.bool()])
    assert "A code flickers." in masked_text and "It stops." in masked_text
    for leaked in ("Describe", "And then", "You describe", "USER", "[INST]", "<|im_start|>user"):
        assert leaked not in masked_text, (template, masked_text)
    prompt = processor.apply_chat_template(conversation[:2], add_generation_prompt=(template != "mistral"))
    assert prompt.count("<video>") == 1 and "A code flickers." not in prompt


def test_resize_modes(tokenizer):
    wide = np.full((50, 200, 3), 255, np.uint8)
    stretch = TarsierProcessor.from_parts(tokenizer, "clip", resize_mode="stretch").preprocess_frames([wide])[0]
    pad = TarsierProcessor.from_parts(tokenizer, "clip", resize_mode="pad").preprocess_frames([wide])[0]
    white = (1 - torch.tensor([0.48145466, 0.4578275, 0.40821073])) / torch.tensor([0.26862954, 0.26130258, 0.27577711])
    torch.testing.assert_close(stretch[:, 0, 0], white, atol=0.02, rtol=0)
    torch.testing.assert_close(stretch[:, 168, 168], white, atol=0.02, rtol=0)
    # Keep aspect: the 4:1 image spans 84 rows in the middle; rows above/below are mean colour (0 after norm).
    torch.testing.assert_close(pad[:, 168, 168], white, atol=0.02, rtol=0)
    assert pad[:, :100, :].abs().max() < 0.02 and pad[:, -100:, :].abs().max() < 0.02
    siglip = TarsierProcessor.from_parts(tokenizer, "siglip", patch_size=14, image_size=378)
    assert siglip.preprocess_frames([wide]).shape == (1, 3, 378, 378) and siglip.tokens_per_frame == 27 * 28 + 1


def test_sampling_options_reach_the_reader(processor, clip):
    out = processor(
        text=["<video>", "<video>"], videos=[str(clip), str(clip)], frame_sampling=RandomSegmentsSampling((3, 6)), rng=0
    )
    counts = out["num_frames"].tolist()
    assert all(3 <= c <= 6 for c in counts)
    assert out["pixel_values"].shape[0] == sum(counts)
    fps = processor(text="<video>", videos=[str(clip)], frame_sampling=FpsSampling(fps=2.0, max_frames=64))
    assert fps["num_frames"].tolist() == [2]  # a 1 s clip at 2 fps


def test_errors_are_clear(processor, clip):
    with pytest.raises(ValueError, match="2 <video> placeholders but 1 videos"):
        processor(text="<video> <video>", videos=[str(clip)])
    with pytest.raises(ValueError, match="truncation"):
        processor(text="<video> tail", videos=[str(clip)], truncation=True, max_length=700)
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        processor(text="<video>", videos=["/nonexistent/nope.mp4"])


@pytest.mark.slow
def test_save_and_load_with_auto_processor_remote_code(tokenizer, clip, tmp_path):
    processor = TarsierProcessor.from_parts(
        tokenizer, "clip", chat_template="chatml", use_frame_separators=True, resize_mode="pad",
        frame_sampling=UniformSampling(3),
    )
    folder = tmp_path / "saved"
    processor.save_pretrained(folder)
    for code in ("processing_tarsier.py", "video_processing_tarsier.py", "configuration_tarsier.py",
                 "frame_sampling_tarsier.py", "media_loading_tarsier.py", "video_reader_tarsier.py",
                 "media_limits_tarsier.py"):
        assert (folder / code).read_text() == (REPO / code).read_text()
    assert (folder / "chat_template.jinja").read_text() == CHAT_TEMPLATES["chatml"]
    config = json.loads((folder / "processor_config.json").read_text())
    assert config["auto_map"]["AutoProcessor"] == "processing_tarsier.TarsierProcessor"
    assert config["resize_mode"] == "pad" and config["frame_sampling"] == {"policy": "uniform", "num_frames": 3}

    conversation = [
        user_turn({"type": "video", "path": str(clip)}, {"type": "image", "image": np.full((30, 60, 3), 90, np.uint8)}),
        {"role": "assistant", "content": [{"type": "text", "text": "Blocks."}]},
    ]
    expected = processor.apply_chat_template(
        conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    torch.save(dict(expected), tmp_path / "expected.pt")

    # A fresh interpreter, cwd elsewhere, the repo NOT importable: only the copied remote code can load.
    script = textwrap.dedent(
        f"""
        import os, sys, numpy as np, torch
        from transformers import AutoProcessor
        # the repo folder itself is not on the path (a virtual environment inside it may be)
        assert not any(p and os.path.realpath(p) == {str(REPO)!r} for p in sys.path), sys.path
        processor = AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        module = type(processor).__module__
        assert module.startswith("transformers_modules"), module
        assert not sys.modules[module].__file__.startswith({str(REPO)!r})
        conversation = [
            {{"role": "user", "content": [{{"type": "video", "path": {str(clip)!r}}},
                {{"type": "image", "image": np.full((30, 60, 3), 90, np.uint8)}},
                {{"type": "text", "text": "Describe the video."}}]}},
            {{"role": "assistant", "content": [{{"type": "text", "text": "Blocks."}}]}},
        ]
        out = processor.apply_chat_template(
            conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        torch.save(dict(out), {str(tmp_path / "reloaded.pt")!r})
        print(module, processor.image_token_id, processor.tokens_per_frame)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-3000:]
    reloaded = torch.load(tmp_path / "reloaded.pt")
    keys = {"input_ids", "attention_mask", "pixel_values", "num_frames", "assistant_masks"}
    assert set(reloaded) == set(expected) == keys
    for key in expected:
        torch.testing.assert_close(reloaded[key], expected[key], rtol=0, atol=0)
    assert expected["num_frames"].tolist() == [4]


def test_frame_sampling_round_trips_through_save_pretrained(tokenizer, clip, tmp_path):
    """The default sampling object is saved whole in processor_config.json and comes back equal; a config written
    before `frame_sampling` existed (loose sampling/video_fps/max_frames keys) keeps its policy."""
    sampling = RandomSegmentsSampling((2, 5))
    processor = TarsierProcessor.from_parts(tokenizer, "clip", chat_template="chatml", frame_sampling=sampling)
    processor.save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "processor_config.json").read_text())
    assert config["frame_sampling"] == {"policy": "random_segments", "num_frames": [2, 5]}
    reloaded = TarsierProcessor.from_pretrained(tmp_path / "saved")
    assert reloaded.frame_sampling == sampling and isinstance(reloaded.frame_sampling.num_frames, tuple)
    counts = reloaded(text=["<video>"] * 4, videos=[str(clip)] * 4, rng=0)["num_frames"].tolist()
    assert all(2 <= c <= 5 for c in counts) and len(set(counts)) > 1

    legacy = {k: v for k, v in config.items() if k != "frame_sampling"}
    legacy.update(sampling="fps", video_fps=2.0, max_frames=16, num_frames=8)
    (tmp_path / "saved" / "processor_config.json").write_text(json.dumps(legacy))
    assert TarsierProcessor.from_pretrained(tmp_path / "saved").frame_sampling == FpsSampling(fps=2.0, max_frames=16)


def test_a_policy_added_to_the_registry_works_end_to_end(tokenizer, clip, tmp_path):
    """Adding a policy is one registered FrameSampling subclass (frame_sampling_tarsier's registry): the processor
    samples with it, saves it and loads it back, with no other file touched."""
    from frame_sampling_tarsier import FRAME_SAMPLING_POLICIES, FrameSampling, register_frame_sampling

    @register_frame_sampling
    @dataclass(frozen=True)
    class EveryKth(FrameSampling):
        policy: ClassVar[str] = "every_kth_test"
        k: int = 2

        def indices(self, timestamps, complex_clip=False, rng=None):
            return np.arange(0, len(np.atleast_1d(timestamps)) if np.ndim(timestamps) else int(timestamps), self.k)

        def max_frames_per_video(self, complex_clip=False):
            return None

    try:
        processor = TarsierProcessor.from_parts(tokenizer, "clip", chat_template="chatml", frame_sampling={
            "policy": "every_kth_test", "k": 10})
        out = processor(text="<video>", videos=[str(clip)], return_metadata=True)
        assert out["video_metadata"][0].frames_indices == [0, 10, 20]  # a 30-frame clip
        assert out["num_frames"].tolist() == [3]
        processor.save_pretrained(tmp_path)
        assert TarsierProcessor.from_pretrained(tmp_path).frame_sampling == EveryKth(k=10)
        with pytest.raises(ValueError, match=r"'every_kth_test' takes \['k'\], not \['n'\]"):
            processor(text="<video>", videos=[str(clip)], frame_sampling={"policy": "every_kth_test", "n": 1})
    finally:
        FRAME_SAMPLING_POLICIES.pop("every_kth_test")
    with pytest.raises(ValueError, match="unknown frame sampling policy 'every_kth_test'"):
        TarsierProcessor.from_pretrained(tmp_path)


def test_call_options_adjust_the_default_sampling(processor, clip):
    """transformers' `num_frames` / `fps` video options adjust the processor's sampling object for one call."""
    meta = lambda out: out["video_metadata"][0].frames_indices  # noqa: E731
    uniform4 = UniformSampling(4).indices(30).tolist()
    assert meta(processor(text="<video>", videos=[str(clip)], return_metadata=True)) == uniform4
    assert meta(processor(text="<video>", videos=[str(clip)], num_frames=3, return_metadata=True)) == [0, 14, 29]
    # a 30-frame clip at 30 fps: the frames on screen at 0, 0.25, 0.5 and 0.75 s
    assert meta(processor(text="<video>", videos=[str(clip)], fps=4.0, return_metadata=True)) == [0, 7, 15, 22]
    assert "video_metadata" not in processor(text="<video>", videos=[str(clip)])
    with pytest.raises(ValueError, match="'fps' has no num_frames"):
        processor(text="<video>", videos=[str(clip)], frame_sampling=FpsSampling(2.0), num_frames=3)


def test_unknown_options_are_refused_not_ignored(processor, clip):
    """transformers' mixin only warns about an option it does not know; the old loose sampling arguments must not
    be dropped silently."""
    with pytest.raises(TypeError, match=r"unknown options \['max_frames', 'sampling'\]; frame sampling is one"):
        processor(text="<video>", videos=[str(clip)], sampling="fps", max_frames=4)
