"""Media given as URLs, as OpenAI-style clients send them: `file://` URLs, `data:` URIs of images and video files,
and videos as base64 JPEG frames (`data:video/jpeg;base64,<frame>,<frame>,...`, the form vLLM's
`vllm/multimodal/video.py` `VideoMediaIO.load_base64` splits on commas)."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from frame_sampling_tarsier import UniformSampling
from media_limits_tarsier import VideoReadError
from media_loading_tarsier import load_image, load_video
from tests.colour_clips import write_colour_clips


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_colour_clips(tmp_path_factory.mktemp("clips")) / "videos" / "red.mp4"


def _jpeg_b64(frame: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, "JPEG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_file_url_and_data_uri_give_the_file_frames(clip):
    by_path = load_video(str(clip), UniformSampling(4))
    by_url = load_video(clip.as_uri(), UniformSampling(4))
    data = "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode()
    by_data = load_video(data, UniformSampling(4))
    assert np.array_equal(by_url.frames, by_path.frames) and np.array_equal(by_data.frames, by_path.frames)
    assert by_data.indices.tolist() == by_path.indices.tolist() and by_data.total_frames == by_path.total_frames
    assert by_data.source.startswith("data:video/mp4;base64,...") and len(by_data.source) < 80


def test_base64_jpeg_frames(clip):
    frames = load_video(str(clip), UniformSampling(6)).frames
    encoded = [_jpeg_b64(f) for f in frames]
    decoded = np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(e))).convert("RGB")) for e in encoded])
    joined = load_video("data:video/jpeg;base64," + ",".join(encoded), UniformSampling(3))
    assert joined.total_frames == 6 and joined.indices.tolist() == [0, 2, 5]  # the uniform rule over 6 frames
    assert np.array_equal(joined.frames, decoded[[0, 2, 5]])
    as_list = load_video(["data:image/jpeg;base64," + e for e in encoded], UniformSampling(3))
    assert np.array_equal(as_list.frames, joined.frames)


def test_image_data_uri_and_file_url(tmp_path):
    image = np.zeros((10, 12, 3), np.uint8)
    image[:, :6] = (200, 10, 10)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    (tmp_path / "a.png").write_bytes(buffer.getvalue())
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    assert np.array_equal(load_image(uri), image)
    assert np.array_equal(load_image((tmp_path / "a.png").as_uri()), image)


def test_processor_reads_urls_in_conversations(tiny_tarsier, clip):
    _, _, processor = tiny_tarsier
    data = "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode()

    def encode(url):
        conversation = [{"role": "user", "content": [{"type": "video", "url": url}, {"type": "text", "text": "Hi"}]}]
        return processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True,
                                             return_dict=True, processor_kwargs={"num_frames": 3})

    by_path, by_data = encode(str(clip)), encode(data)
    assert by_data["num_frames"].tolist() == [3]
    assert by_data["input_ids"].tolist() == by_path["input_ids"].tolist()
    assert by_data["pixel_values"].equal(by_path["pixel_values"])


@pytest.mark.parametrize("url, reason", [
    ("data:video/mp4;base64," + base64.b64encode(b"\x00" * 300).decode(), "not a readable video file"),
    ("data:video/mp4;base64,@@not base64@@", "invalid base64"),
    ("data:video/jpeg;base64,AAAA,BBBB", "frame 0 is not a readable image"),
    ("data:text/plain;base64,AAAA", "expected a video/* or image/* data URI"),
    ("data:video/mp4", "not a data URI"),
    ("https://example.org/clip.mp4", "http(s) URLs are not fetched"),
    ("file://otherhost/clip.mp4", "another host"),
])
def test_bad_urls_say_why(url, reason):
    with pytest.raises(VideoReadError, match=re.escape(reason)) as error:
        load_video(url)
    assert len(str(error.value)) < 300  # the payload is not echoed


def test_missing_file_url(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_video((tmp_path / "gone.mp4").as_uri())
