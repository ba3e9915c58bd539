"""Tarsier2's pixel path (issue #35): `processing_tarsier2` against transformers' Qwen2-VL image processor (PIL
backend), an independent re-implementation of transformers 4.47's slow video path (the release's), and the release's
sampling and resizing rules, on real frames of demo_test.mp4 (1920x800 H.264); token expansion, `mm_token_type_ids`,
the saved folder (plain Qwen2-VL processor files with one top-level `auto_map`) and its round trips: AutoProcessor
with trust_remote_code=True in a fresh interpreter, `Tarsier2Processor.from_pretrained` on demo_test.mp4.

Checked once outside CI (side environments, demo_test.mp4's 16 frames): the release's own chain (decord 0.6.0, its
`resize2pixels`, transformers 4.47.0's `Qwen2VLImageProcessor(videos=...)`, Pillow 9.3.0) gives the same frames
(0 levels) and the same `pixel_values_videos` (max abs diff 0.0) as this processor; transformers 5.23's torchvision
`Qwen2VLVideoProcessor` gives the same grids and values within 0.030 (2 levels of bicubic resampling)."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize  # the reference arithmetic

from frame_sampling_tarsier import Tarsier2Sampling, UniformSampling, as_frame_sampling
from media_loading_tarsier import load_video
from processing_tarsier2 import build_tarsier2_processor
from video_processing_tarsier2 import Tarsier2VideoProcessor

# Qwen2-VL-7B-Instruct's preprocessor_config.json bounds, the checkpoint's (second) resize
MIN_PIXELS, MAX_PIXELS = 56 * 56, 14 * 14 * 4 * 16384
RELEASE_PRE_RESIZE = 460800
QWEN2VL_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
# A Qwen2-VL-style ChatML template (vision blocks as <|vision_start|><|..._pad|><|vision_end|>), with generation marks
TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for block in message['content'] %}"
    "{% if block['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif block['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif message['role'] == 'assistant' %}{% generation %}{{ block['text'] }}<|im_end|>{% endgeneration %}"
    "{% else %}{{ block['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% if message['role'] != 'assistant' %}<|im_end|>{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def image_processor(max_pixels=MAX_PIXELS, min_pixels=MIN_PIXELS):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)


def video_processor(**kwargs):
    options = dict(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    return Tarsier2VideoProcessor(**{**options, **kwargs})


@pytest.fixture(scope="module")
def demo_frames(demo_video):
    """The release's 16 frames of demo_test.mp4 (84 frames, 800x1920), decoded once."""
    sample = load_video(demo_video, Tarsier2Sampling(16))
    return sample.frames


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN2VL_TOKENS], special_tokens=True)
    return tokenizer


def max_abs_diff(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) if a.size else 0.0


def release_pre_resize(frame: np.ndarray, max_pixels=RELEASE_PRE_RESIZE, min_pixels=0) -> Image.Image:
    """`TarsierProcessor.resize2pixels`: smart_resize with factor 1, then PIL's `resize` with its default filter."""
    image = Image.fromarray(frame)
    height, width = smart_resize(image.height, image.width, 1, min_pixels, max_pixels)
    return image.resize((width, height))


def slow_qwen2vl_video(frames, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, patch=14, temporal=2, merge=2):
    """transformers 4.47's `Qwen2VLImageProcessor(videos=frames)` for one video, re-implemented from its steps with
    the numpy functions it called (unchanged in 5.23): every frame resized to the first frame's smart_resize size
    (bicubic, through PIL), rescaled, normalised channels-last; one frame tiled over the temporal patch; patches
    `(t, temporal, c, h/m, m, p, w/m, m, p)` transposed to `(t, h/m, w/m, m, m, c, temporal, p, p)`."""
    from transformers.image_transforms import normalize, rescale, resize
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ChannelDimension, PILImageResampling

    arrays = [np.asarray(f) for f in frames]
    height, width = smart_resize(arrays[0].shape[0], arrays[0].shape[1], patch * merge, min_pixels, max_pixels)
    last = ChannelDimension.LAST
    out = []
    for array in arrays:
        array = resize(array, (height, width), resample=PILImageResampling.BICUBIC, input_data_format=last)
        array = rescale(array, 1 / 255, input_data_format=last)
        array = normalize(array, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, input_data_format=last)
        out.append(array.transpose(2, 0, 1))
    patches = np.array(out)
    if len(patches) == 1:
        patches = np.tile(patches, (temporal, 1, 1, 1))
    t, gh, gw = len(patches) // temporal, height // patch, width // patch
    patches = patches.reshape(t, temporal, 3, gh // merge, merge, patch, gw // merge, merge, patch)
    patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return patches.reshape(t * gh * gw, 3 * temporal * patch * patch), (t, gh, gw)


# -- frame sampling ---------------------------------------------------------------------------------------------


def test_tarsier2_sampling_is_the_release_v1_rule(demo_video):
    # 84 frames -> 16 by round(i * 83 / 15), first and last included
    assert Tarsier2Sampling(16).indices(84).tolist() == [0, 6, 11, 17, 22, 28, 33, 39, 44, 50, 55, 61, 66, 72, 77, 83]
    assert load_video(demo_video, Tarsier2Sampling(16)).indices.tolist() == Tarsier2Sampling(16).indices(84).tolist()
    assert Tarsier2Sampling(16).indices(10).tolist() == list(range(10))  # short clip: every frame once, no repeats
    assert Tarsier2Sampling(16).indices(16).tolist() == list(range(16))
    assert Tarsier2Sampling(1).indices(84).tolist() == [0] and Tarsier2Sampling(16).indices(1).tolist() == [0]
    assert UniformSampling(16).indices(10).tolist() != list(range(10))  # the Tarsier-1 policy repeats frames instead
    # by frame index: a variable-frame-rate clip samples the same indices as a constant-rate one of its length
    vfr = np.cumsum(np.r_[0.0, np.where(np.arange(83) < 40, 0.01, 0.2)])
    by_index = Tarsier2Sampling(16).indices(vfr).tolist()
    assert by_index == Tarsier2Sampling(16).indices(84).tolist() != UniformSampling(16).indices(vfr).tolist()
    for total in range(17, 300):  # halves round to even, as Python's round in the release
        assert Tarsier2Sampling(16).indices(total).tolist() == [round(i * (total - 1) / 15) for i in range(16)]
    policy = as_frame_sampling({"policy": "tarsier2", "num_frames": 8})
    assert policy == Tarsier2Sampling(8) and policy.to_dict() == {"policy": "tarsier2", "num_frames": 8}
    assert policy.with_num_frames(4) == Tarsier2Sampling(4)


# -- pixels -----------------------------------------------------------------------------------------------------


def test_duplicated_frames_equal_the_qwen2vl_image_processor(demo_frames):
    """A duplicated frame fills one temporal patch, which is what the image processor makes of one image (it tiles
    it over the temporal axis): the video's patches are the frames' image patches, one after another."""
    frames = demo_frames[:4]
    out = video_processor(frame_pre_resize_max_pixels=None)(frames, do_sample_frames=False)
    ref = image_processor()(list(frames))
    assert out["video_grid_thw"].tolist() == [[4, 58, 138]]  # 800x1920 -> 812x1932
    assert ref["image_grid_thw"].tolist() == [[1, 58, 138]] * 4
    assert out["pixel_values_videos"].dtype == np.float32 and out["pixel_values_videos"].shape == (4 * 58 * 138, 1176)
    assert max_abs_diff(out["pixel_values_videos"], ref["pixel_values"]) == 0.0


def test_release_two_step_resize(demo_frames):
    """The release: PIL resize to at most 460800 pixels (factor 1), then Qwen2-VL's resize (factor 28)."""
    processor = video_processor()  # the release's defaults: pre-resize 460800, duplicated frames
    assert processor.frame_sizes(800, 1920, num_images=32) == ((438, 1051), (448, 1064))
    out = processor(demo_frames, do_sample_frames=False, return_tensors="pt")
    assert out["video_grid_thw"].tolist() == [[16, 32, 76]] and out["video_grid_thw"].dtype == torch.int64
    pre = [release_pre_resize(frame) for frame in demo_frames[:6]]  # the references on the first 6 frames
    assert pre[0].size == (1051, 438)
    rows = 6 * 32 * 76
    ref = image_processor()(pre)
    assert max_abs_diff(out["pixel_values_videos"][:rows], ref["pixel_values"]) == 0.0
    # transformers 4.47's slow video path on the duplicated frames (what the release ran)
    slow, grid = slow_qwen2vl_video([f for image in pre for f in (image, image)])
    assert grid == (6, 32, 76) and max_abs_diff(out["pixel_values_videos"][:rows], slow) == 0.0


def test_grid_t_is_the_frame_count_only_with_duplication(demo_frames):
    frames = [np.asarray(release_pre_resize(f, 60000)) for f in demo_frames]  # small frames: a fast test
    duplicated = video_processor(frame_pre_resize_max_pixels=None)(frames, do_sample_frames=False)
    paired = video_processor(frame_pre_resize_max_pixels=None, duplicate_frames=False)(frames, do_sample_frames=False)
    (t, h, w), (t2, h2, w2) = duplicated["video_grid_thw"][0], paired["video_grid_thw"][0]
    assert (t, t2) == (16, 8) and (h, w) == (h2, w2)
    # without duplication neighbours share a temporal patch: transformers 4.47's slow path on the frames as given
    slow, grid = slow_qwen2vl_video(frames)
    assert grid == (8, h, w) and max_abs_diff(paired["pixel_values_videos"], slow) == 0.0


def test_odd_frame_counts_and_single_frames(demo_frames):
    frames = [np.asarray(release_pre_resize(f, 60000)) for f in demo_frames[:5]]
    plain = video_processor(frame_pre_resize_max_pixels=None, duplicate_frames=False)
    # 5 frames: the last temporal patch is completed with the last frame (transformers' Qwen2VLVideoProcessor)
    out = plain(frames, do_sample_frames=False)
    slow, grid = slow_qwen2vl_video(frames + frames[-1:])
    assert tuple(out["video_grid_thw"][0]) == grid == (3, grid[1], grid[2])
    assert max_abs_diff(out["pixel_values_videos"], slow) == 0.0
    # one frame: tiled over the temporal patch with or without duplication (4.47 tiles, the release duplicates)
    one = plain(frames[:1], do_sample_frames=False)
    duplicated = video_processor(frame_pre_resize_max_pixels=None)(frames[:1], do_sample_frames=False)
    slow, grid = slow_qwen2vl_video(frames[:1])
    assert tuple(one["video_grid_thw"][0]) == tuple(duplicated["video_grid_thw"][0]) == grid and grid[0] == 1
    assert max_abs_diff(one["pixel_values_videos"], slow) == max_abs_diff(duplicated["pixel_values_videos"], slow) == 0


def test_frames_over_max_pixels(demo_frames):
    """Frames above the checkpoint's max_pixels shrink to the largest multiple-of-28 size under it."""
    frames = demo_frames[:2]
    out = video_processor(frame_pre_resize_max_pixels=None, max_pixels=200_000)(frames, do_sample_frames=False)
    t, h, w = out["video_grid_thw"][0].tolist()
    # floor(800 / beta / 28) * 28 = 280, floor(1920 / beta / 28) * 28 = 672 with beta = sqrt(800 * 1920 / 200000)
    assert (t, h, w) == (2, 20, 48) and h * w * 14 * 14 <= 200_000
    ref = image_processor(max_pixels=200_000)(list(frames))
    assert max_abs_diff(out["pixel_values_videos"], ref["pixel_values"]) == 0.0
    # transformers' spelling of the bounds, as a call option, reads the same
    by_size = video_processor(frame_pre_resize_max_pixels=None)(
        frames, do_sample_frames=False, size={"shortest_edge": MIN_PIXELS, "longest_edge": 200_000})
    assert by_size["video_grid_thw"].tolist() == [[2, 20, 48]]
    assert max_abs_diff(by_size["pixel_values_videos"], out["pixel_values_videos"]) == 0.0
    with pytest.raises(ValueError, match="aspect ratio must be smaller than 200"):
        video_processor()(np.zeros((1, 2, 500, 3), np.uint8), do_sample_frames=False)
    with pytest.raises(ValueError, match="has no area"):
        video_processor()(np.zeros((1, 0, 5, 3), np.uint8), do_sample_frames=False)


def test_release_pixel_budget_per_sample():
    """`max_pixels_per_sample // images` lowers the first resize's cap once a sample holds more than 40 images
    (duplicates counted): 16 duplicated frames keep 460800, 40 frames (80 images) get 235929."""
    processor = video_processor()
    assert processor.frame_sizes(720, 1280, num_images=32)[0] == (509, 905)  # 460800 cap
    budget = 128 * 384 * 384 // 80
    h1, w1 = processor.frame_sizes(720, 1280, num_images=80)[0]
    beta = math.sqrt(720 * 1280 / budget)
    assert (h1, w1) == (math.floor(720 / beta), math.floor(1280 / beta)) and h1 * w1 <= budget
    frames = np.random.default_rng(0).integers(0, 256, (40, 72, 128, 3), dtype=np.uint8)
    grid = processor(frames, do_sample_frames=False, max_pixels_per_sample=40 * 2 * 3000)["video_grid_thw"]
    assert grid.tolist() == [[40, 4, 6]]  # each frame pre-resized to <= 3000 pixels (40x72), then 56x84
    two = processor([frames[:20], frames[20:]], do_sample_frames=False, max_pixels_per_sample=40 * 2 * 3000,
                    sample_ids=[0, 0])
    assert two["video_grid_thw"].tolist() == [[20, 4, 6]] * 2  # one sample: the budget is shared
    apart = processor([frames[:20], frames[20:]], do_sample_frames=False, max_pixels_per_sample=40 * 2 * 3000)
    assert apart["video_grid_thw"].tolist() == [[20, 4, 8]] * 2  # two samples of 40 images: 6000 pixels each
    # the token count without pixels (what vLLM-style schedulers ask), with and without duplication
    assert processor.get_num_of_video_patches(16, 720, 1280) == 16 * 36 * 64
    plain = {"duplicate_frames": False, "frame_pre_resize_max_pixels": None}
    assert processor.get_num_of_video_patches(5, 72, 128, plain) == 3 * 6 * 10  # 72x128 -> 84x140
    assert video_processor(**plain)(frames[:5], do_sample_frames=False)["video_grid_thw"].tolist() == [[3, 6, 10]]


def test_sampling_and_metadata_from_a_file(demo_video):
    out = video_processor()(str(demo_video), num_frames=4, return_metadata=True)
    assert out["video_grid_thw"].tolist() == [[4, 32, 76]]
    assert out["video_metadata"][0].frames_indices == [0, 28, 55, 83]
    assert out["video_metadata"][0].total_num_frames == 84
    with pytest.raises(TypeError, match="unknown options"):
        video_processor()(str(demo_video), frames=3)


# -- processor --------------------------------------------------------------------------------------------------


def conversation(video, text="Describe the video.", answer=None):
    turns = [{"role": "user", "content": [{"type": "video", "video": video}, {"type": "text", "text": text}]}]
    if answer is not None:
        turns.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return turns


def test_chat_template_expands_video_tokens(tokenizer, demo_video):
    processor = build_tarsier2_processor(tokenizer, TEMPLATE, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (5, 100, 180, 3), dtype=np.uint8)
    out = processor.apply_chat_template(
        [conversation(str(demo_video), answer="A man walks."), conversation(list(small), answer="Noise.")],
        tokenize=True, return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt",
        processor_kwargs={"return_metadata": True, "num_frames": 4},
    )
    grids = out["video_grid_thw"].tolist()
    assert grids == [[4, 32, 76], [4, 8, 12]]  # 100x180 -> 112x168: 4 of 5 frames, each its own temporal patch
    video_id = processor.video_token_id
    counts = (out["input_ids"] == video_id).sum(dim=1).tolist()
    assert counts == [4 * 32 * 76 // 4, 4 * 8 * 12 // 4]
    types = out["mm_token_type_ids"]
    assert torch.equal(types == 2, out["input_ids"] == video_id) and not (types == 1).any()
    assert types.shape == out["input_ids"].shape == out["attention_mask"].shape
    assert out["pixel_values_videos"].shape == (4 * 32 * 76 + 4 * 8 * 12, 1176)
    assert [m.frames_indices for m in out["video_metadata"]] == [[0, 28, 55, 83], [0, 1, 3, 4]]
    # each video's placeholder run sits between <|vision_start|> and <|vision_end|>, and the assistant mask covers
    # exactly the answers (plus <|im_end|>)
    start, end = tokenizer.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>"])
    for row, count in zip(out["input_ids"].tolist(), counts):
        first = row.index(video_id)
        assert row[first - 1] == start and row[first + count] == end and row.count(video_id) == count
    answers = [tokenizer.decode(ids[mask.bool()]) for ids, mask in zip(out["input_ids"], out["assistant_masks"])]
    assert answers == ["A man walks.<|im_end|>", "Noise.<|im_end|>"]
    # the same pixels as the video processor alone
    alone = processor.video_processor([str(demo_video), list(small)], num_frames=4)
    assert max_abs_diff(out["pixel_values_videos"], alone["pixel_values_videos"]) == 0.0
    # __call__ with text and frames, the release's 16 frames by default
    text = processor.apply_chat_template(conversation(None), add_generation_prompt=True)
    called = processor(text=text, videos=[small], return_tensors="pt")
    assert called["video_grid_thw"].tolist() == [[5, 8, 12]] and (called["input_ids"] == video_id).sum() == 120
    # options: a policy for one call, the video processor's options flat or in videos_kwargs; unknown ones refused
    called = processor(text=text, videos=[small], frame_sampling={"policy": "uniform", "num_frames": 3},
                       return_metadata=True)
    assert called["video_grid_thw"].tolist() == [[3, 8, 12]] and called["video_metadata"][0].frames_indices == [0, 2, 4]
    called = processor(text=text, videos=[small], videos_kwargs={"duplicate_frames": False})
    assert called["video_grid_thw"].tolist() == [[3, 8, 12]]  # 5 frames in pairs, the last one completed
    with pytest.raises(TypeError, match="unknown options"):
        processor(text=text, videos=[small], frames=3)


def nested_auto_maps(value, path="") -> list[str]:
    """The paths of every `auto_map` in a JSON value below its top level."""
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "auto_map" and path:
                found.append(f"{path}.auto_map")
            found += nested_auto_maps(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += nested_auto_maps(item, f"{path}[{index}]")
    return found


RELEASE_VIDEO_OPTIONS = {"frame_sampling": {"policy": "tarsier2", "num_frames": 16}, "do_sample_frames": True,
                         "duplicate_frames": True, "frame_pre_resize_max_pixels": 460800,
                         "frame_pre_resize_min_pixels": 0, "max_pixels_per_sample": 128 * 384 * 384}


def test_saved_folder_is_plain_qwen2vl_with_tarsier2_remote_code(tokenizer, tmp_path):
    """`save_pretrained` writes a plain Qwen2-VL processor config (`processor_class` Qwen2VLProcessor, transformers'
    Qwen2-VL image / video processor configs nested, the Tarsier2-only options in the video config's `tarsier2`
    block) with one `auto_map`, at the top level: AutoProcessor without trust_remote_code goes to transformers'
    Qwen2VLProcessor (here, without torchvision, to its video processor's torchvision requirement, not to a remote
    code refusal), with trust_remote_code=True to the folder's Tarsier2Processor with the release's video options,
    in a fresh `python -I` interpreter without this repository, from transformers' module cache."""
    processor = build_tarsier2_processor(tokenizer, TEMPLATE, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    folder = tmp_path / "saved"
    processor.save_pretrained(folder)
    assert {"processing_tarsier2.py", "video_processing_tarsier2.py", "frame_sampling_tarsier.py",
            "media_loading_tarsier.py", "video_reader_tarsier.py", "media_limits_tarsier.py",
            "processor_config.json", "chat_template.jinja"} <= {p.name for p in folder.iterdir()}
    assert not {"preprocessor_config.json", "video_preprocessor_config.json"} & {p.name for p in folder.iterdir()}
    config = json.loads((folder / "processor_config.json").read_text())
    assert config["processor_class"] == "Qwen2VLProcessor"
    assert config["auto_map"] == {"AutoProcessor": "processing_tarsier2.Tarsier2Processor"}
    assert nested_auto_maps(config) == []
    bounds = {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}
    image_config, video_config = config["image_processor"], config["video_processor"]
    assert image_config["image_processor_type"] == "Qwen2VLImageProcessor" and image_config["size"] == bounds
    assert video_config["video_processor_type"] == "Qwen2VLVideoProcessor" and video_config["size"] == bounds
    assert video_config["do_sample_frames"] is False and video_config["cap_pixels_per_frame"] is False
    assert video_config["tarsier2"] == RELEASE_VIDEO_OPTIONS
    assert {k: video_config[k] for k in ("patch_size", "temporal_patch_size", "merge_size", "resample")} == {
        "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2, "resample": 3}
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert "auto_map" not in tokenizer_config and tokenizer_config["processor_class"] == "Qwen2VLProcessor"
    assert json.loads(processor.to_json_string()) == config  # saving leaves the processor as it was
    assert getattr(processor.image_processor, "auto_map", None) is None

    frames = np.random.default_rng(1).integers(0, 256, (3, 90, 160, 3), dtype=np.uint8)
    np.save(tmp_path / "frames.npy", frames)
    expected = processor(text="<|vision_start|><|video_pad|><|vision_end|>Hi", videos=[frames], return_tensors="np")
    script = textwrap.dedent(f"""
        import importlib.util, json, sys
        import numpy as np
        from transformers import AutoProcessor, Qwen2VLProcessor
        plain = {{}}
        for name, load in (("AutoProcessor", AutoProcessor.from_pretrained), ("Qwen2VLProcessor",
                                                                            Qwen2VLProcessor.from_pretrained)):
            try:
                plain[name] = type(load("{folder}")).__name__
            except Exception as error:
                plain[name] = f"{{type(error).__name__}}: {{error}}"
        processor = AutoProcessor.from_pretrained("{folder}", trust_remote_code=True)
        assert not {{"processing_tarsier2", "video_processing_tarsier2", "frame_sampling_tarsier",
                     "media_loading_tarsier"}} & set(sys.modules)
        video = processor.video_processor
        options = {{name: getattr(video, name) for name in {sorted(RELEASE_VIDEO_OPTIONS)!r}}}
        options["frame_sampling"] = video.frame_sampling.to_dict()
        out = processor(text="<|vision_start|><|video_pad|><|vision_end|>Hi", videos=[np.load("frames.npy")],
                        return_tensors="np")
        np.save("pixels.npy", out["pixel_values_videos"])
        np.save("ids.npy", out["input_ids"])
        np.save("grid.npy", out["video_grid_thw"])
        print(json.dumps({{"class": type(processor).__name__, "video_class": type(video).__name__,
                          "module": sys.modules[type(processor).__module__].__file__, "options": options,
                          "plain": plain, "torchvision": importlib.util.find_spec("torchvision") is not None}}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    result = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert (report["class"], report["video_class"]) == ("Tarsier2Processor", "Tarsier2VideoProcessor")
    assert Path(report["module"]).is_relative_to(tmp_path / "modules")
    assert report["options"] == RELEASE_VIDEO_OPTIONS
    for name, outcome in report["plain"].items():  # never a request for trust_remote_code
        if report["torchvision"]:
            assert outcome == "Qwen2VLProcessor", name
        else:
            assert outcome.startswith("ImportError") and "Qwen2VLVideoProcessor requires the Torchvision" in outcome
    assert np.load(tmp_path / "grid.npy").tolist() == expected["video_grid_thw"].tolist() == [[3, 6, 12]]
    assert np.array_equal(np.load(tmp_path / "ids.npy"), expected["input_ids"])
    assert max_abs_diff(np.load(tmp_path / "pixels.npy"), expected["pixel_values_videos"]) == 0.0


def test_from_pretrained_keeps_the_release_path_on_a_real_clip(tokenizer, demo_video, tmp_path):
    """`Tarsier2Processor.from_pretrained` (tarsier_hf.families.load_processor, no remote code) reads the saved
    folder back into the release's path: the same options and, on demo_test.mp4 (16 frames by the v1 rule, each
    resized first to 438x1051 and given twice), the same tensors as the processor that saved it."""
    from processing_tarsier2 import Tarsier2Processor

    processor = build_tarsier2_processor(tokenizer, TEMPLATE, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    processor.save_pretrained(tmp_path / "saved")
    loaded = Tarsier2Processor.from_pretrained(tmp_path / "saved")
    assert type(loaded.video_processor) is Tarsier2VideoProcessor
    assert loaded.video_processor.to_dict() == processor.video_processor.to_dict()
    assert {name: getattr(loaded.video_processor, name) for name in RELEASE_VIDEO_OPTIONS if name != "frame_sampling"
            } == {k: v for k, v in RELEASE_VIDEO_OPTIONS.items() if k != "frame_sampling"}
    assert loaded.video_processor.frame_sampling == Tarsier2Sampling(16)
    assert (loaded.image_processor.size.shortest_edge, loaded.image_processor.size.longest_edge) == (
        MIN_PIXELS, MAX_PIXELS)
    assert loaded.chat_template == TEMPLATE
    text = "<|vision_start|><|video_pad|><|vision_end|>Describe the video."
    expected = processor(text=text, videos=[str(demo_video)], return_tensors="np", return_metadata=True)
    again = loaded(text=text, videos=[str(demo_video)], return_tensors="np", return_metadata=True)
    assert again["video_grid_thw"].tolist() == expected["video_grid_thw"].tolist() == [[16, 32, 76]]
    assert again["video_metadata"][0].frames_indices == [0, 6, 11, 17, 22, 28, 33, 39, 44, 50, 55, 61, 66, 72, 77, 83]
    assert np.array_equal(again["input_ids"], expected["input_ids"])
    assert max_abs_diff(again["pixel_values_videos"], expected["pixel_values_videos"]) == 0.0


def test_saved_video_configs_read_back():
    """The video processor reads its own saved form, a folder saved before the `tarsier2` block (flat options,
    `video_processor_type` Tarsier2VideoProcessor), and a plain Qwen2-VL video config, whose frame sampling
    (`do_sample_frames` false, fps) is Qwen2-VL's and gives way to the release's sampling."""
    saved = video_processor(frame_pre_resize_max_pixels=30000, duplicate_frames=False, frame_sampling="uniform")
    assert Tarsier2VideoProcessor(**saved.to_dict()).to_dict() == saved.to_dict()
    legacy = {"video_processor_type": "Tarsier2VideoProcessor", "do_sample_frames": False, "duplicate_frames": False,
              "frame_pre_resize_max_pixels": None, "frame_sampling": {"policy": "uniform", "num_frames": 8},
              "min_pixels": MIN_PIXELS, "max_pixels": 200_000, "auto_map": {"AutoVideoProcessor": "x.Y"}}
    loaded = Tarsier2VideoProcessor(**legacy)
    assert (loaded.do_sample_frames, loaded.duplicate_frames, loaded.frame_pre_resize_max_pixels) == (False, False, None)
    assert loaded.frame_sampling.to_dict() == {"policy": "uniform", "num_frames": 8} and loaded.max_pixels == 200_000
    plain = {"video_processor_type": "Qwen2VLVideoProcessor", "do_sample_frames": False, "fps": 2.0,
             "max_frames": 768, "size": {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
             "return_metadata": False}
    loaded = Tarsier2VideoProcessor(**plain)
    assert (loaded.min_pixels, loaded.max_pixels) == (MIN_PIXELS, MAX_PIXELS)
    assert {name: getattr(loaded, name) for name in RELEASE_VIDEO_OPTIONS if name != "frame_sampling"} == {
        k: v for k, v in RELEASE_VIDEO_OPTIONS.items() if k != "frame_sampling"}
    assert loaded.frame_sampling == Tarsier2Sampling(16) and not hasattr(loaded, "fps")


def test_processor_refuses_a_tokenizer_without_qwen2vl_tokens(smollm2_dir):
    from transformers import AutoTokenizer

    with pytest.raises(ValueError, match="lacks Qwen2-VL's tokens"):
        build_tarsier2_processor(AutoTokenizer.from_pretrained(smollm2_dir), TEMPLATE, min_pixels=MIN_PIXELS,
                                 max_pixels=MAX_PIXELS)


def test_video_run_equals_the_release_image_run_in_qwen2vl(tokenizer):
    """The release feeds a video to its model as an `<|image_pad|>` run with `image_grid_thw = (t, h, w)`; this
    processor emits a `<|video_pad|>` run with `video_grid_thw`. transformers' Qwen2-VL gives both the same vision
    features and positions: the logits of a tiny random model are identical."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    processor = build_tarsier2_processor(tokenizer, TEMPLATE, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    frames = np.random.default_rng(2).integers(0, 256, (3, 140, 196, 3), dtype=np.uint8)
    video = processor(text="Look: <|vision_start|><|video_pad|><|vision_end|> What happens?", videos=[frames],
                      return_tensors="pt")
    assert video["video_grid_thw"].tolist() == [[3, 10, 14]]  # t = 3 <= h / 2, w / 2
    ids = dict(zip(("vision_start", "vision_end", "image", "video"), tokenizer.convert_tokens_to_ids(QWEN2VL_TOKENS)))
    config = Qwen2VLConfig(
        text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         intermediate_size=32, vocab_size=len(tokenizer),
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, spatial_merge_size=2,
                           temporal_patch_size=2, patch_size=14),
        image_token_id=ids["image"], video_token_id=ids["video"], vision_start_token_id=ids["vision_start"],
        vision_end_token_id=ids["vision_end"],
    )
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config).eval()
    as_image = {
        "input_ids": torch.where(video["input_ids"] == ids["video"], ids["image"], video["input_ids"]),
        "attention_mask": video["attention_mask"], "mm_token_type_ids": video["mm_token_type_ids"].clamp(max=1),
        "pixel_values": video["pixel_values_videos"], "image_grid_thw": video["video_grid_thw"],
    }
    with torch.no_grad():
        logits_video = model(**video).logits
        logits_image = model(**as_image).logits
    assert torch.equal(logits_video, logits_image)
