"""Exactness and error handling of the PyAV video reader and the frame-sampling policies in processing_tarsier.

Every generated video carries its frame number as a binary code of big blocks in its pixels
(`tarsier_hf.dream_s.video_writer.draw_frame_code`), so each test checks the identity of every returned frame.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from tarsier_hf.dream_s.video_writer import coded_frames, read_frame_code, write_video
from frame_sampling_tarsier import (
    FpsSampling,
    InstructionSampling,
    RandomSegmentsSampling,
    UniformSampling,
    as_frame_sampling,
)
from media_limits_tarsier import VideoReadError
from media_loading_tarsier import load_video
from video_reader_tarsier import VideoReader

FRAMES = 90
HEIGHT, WIDTH = 48, 64


def codes(frames: np.ndarray) -> list[int]:
    return [read_frame_code(frame) for frame in frames]


def sequential_decode(path, keep=None) -> np.ndarray:
    """Reference: the frames of the first video stream decoded front to back (no seeking), in presentation
    order; only the indices in `keep` (all when None) are converted to RGB and returned, in sorted order."""
    with av.open(str(path)) as container:
        frames = sorted(container.decode(video=0), key=lambda frame: frame.pts)
        keep = range(len(frames)) if keep is None else sorted(set(int(i) for i in keep))
        return np.stack([frames[i].to_ndarray(format="rgb24") for i in keep])


# ------------------------------------------------------------------------------------------------------------
# Sampling policies (pure: timestamps -> indices)
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("total", [1, 2, 7, 10, 84, 300, 1801])
@pytest.mark.parametrize("n", [1, 2, 3, 8, 16, 32])
def test_uniform_matches_released_rule_for_constant_frame_rate(total, n):
    timestamps = np.arange(total) / 29.97
    got = UniformSampling(n).indices(timestamps)
    if n == 1:
        expected = [0]  # bytedance/tarsier dataset/utils.py sample_frame_indices: "sample first frame in default"
    else:
        expected = [round(i * (total - 1) / (n - 1)) for i in range(n)]
    assert got.tolist() == expected
    if n > 1:
        assert got[0] == 0 and got[-1] == total - 1


def test_uniform_samples_instants_not_indices_on_variable_frame_rate():
    # 50 frames in the first second, then 10 frames over the next 9 s: uniform-in-time must spend most samples
    # on the slow part, which index-uniform sampling would not.
    timestamps = np.concatenate([np.arange(50) / 50, 1 + np.arange(10)])
    got = UniformSampling(10).indices(timestamps)
    times = timestamps[got]
    targets = np.linspace(0, timestamps[-1], 10)
    for chosen, target in zip(times, targets):
        assert abs(chosen - target) == np.min(np.abs(timestamps - target))
    assert (times >= 1).sum() == 9


def test_random_segments_one_frame_per_segment_and_seedable():
    timestamps = np.arange(300) / 30
    for seed in range(20):
        got = RandomSegmentsSampling((8, 32)).indices(timestamps, rng=seed)
        n = len(got)
        assert 8 <= n <= 32
        for segment, index in enumerate(got):  # segment s holds frames [s * 300 / n, (s + 1) * 300 / n)
            assert segment * 300 <= index * n < (segment + 1) * 300
        assert got.tolist() == RandomSegmentsSampling((8, 32)).indices(timestamps, rng=seed).tolist()
    draws = {len(RandomSegmentsSampling((8, 32)).indices(timestamps, rng=seed)) for seed in range(200)}
    assert min(draws) == 8 and max(draws) == 32
    # Different seeds give different frames.
    assert len({tuple(RandomSegmentsSampling(16).indices(timestamps, rng=s)) for s in range(10)}) > 1


def test_random_segments_short_video_repeats_in_order():
    got = RandomSegmentsSampling(8).indices(np.arange(3) / 30, rng=0)
    assert len(got) == 8 and sorted(got.tolist()) == got.tolist() and set(got.tolist()) == {0, 1, 2}


def test_instruction_tuning_first_last_and_count():
    timestamps = np.arange(500) / 25
    simple = InstructionSampling().indices(timestamps)
    complex_ = InstructionSampling().indices(timestamps, complex_clip=True)
    assert len(simple) == 8 and len(complex_) == 16
    for got in (simple, complex_):
        assert got[0] == 0 and got[-1] == 499
        gaps = np.diff(got)
        assert gaps.max() - gaps.min() <= 1


def test_fps_sampling_and_cap():
    timestamps = np.arange(300) / 30  # 10 s at 30 fps
    assert FpsSampling(1.0).indices(timestamps).tolist() == list(range(0, 300, 30))
    assert FpsSampling(2.0, max_frames=64).indices(timestamps).tolist() == list(range(0, 300, 15))
    capped = FpsSampling(10.0, max_frames=16).indices(timestamps)
    assert capped.tolist() == UniformSampling(16).indices(timestamps).tolist()
    # A rate above the video's never repeats frames.
    assert FpsSampling(50.0).indices(np.arange(5) / 5).tolist() == [0, 1, 2, 3, 4]


def test_short_video_uniform_repeats_every_frame_in_order():
    got = UniformSampling(8).indices(np.arange(3) / 30)
    assert got.tolist() == [0, 0, 1, 1, 1, 1, 2, 2]
    assert UniformSampling(8).indices(np.array([0.0])).tolist() == [0] * 8


def test_policy_errors_are_clear():
    with pytest.raises(ValueError, match="unknown frame sampling policy"):
        as_frame_sampling("nope").indices(10)
    with pytest.raises(ValueError, match="strictly increasing"):
        UniformSampling(2).indices(np.array([0.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="needs fps"):
        as_frame_sampling("fps").indices(10)


# ------------------------------------------------------------------------------------------------------------
# Exact frames from generated videos
# ------------------------------------------------------------------------------------------------------------

VIDEO_CASES = {
    "mp4_short_gop": dict(suffix=".mp4", gop_size=5, max_b_frames=0),
    "mp4_long_gop": dict(suffix=".mp4", gop_size=250),
    "mp4_bframes": dict(suffix=".mp4", gop_size=30, max_b_frames=3),
    "mp4_all_intra": dict(suffix=".mp4", gop_size=1),
    "mp4_odd_size": dict(suffix=".mp4", gop_size=12, size=(37, 53), pix_fmt="yuv444p"),
    "mkv": dict(suffix=".mkv", gop_size=20),
    "webm_vp9": dict(suffix=".webm", codec="libvpx-vp9", gop_size=15),
    "mov": dict(suffix=".mov", gop_size=25, max_b_frames=2),
    "avi_mpeg4": dict(suffix=".avi", codec="mpeg4", gop_size=12),
    "gif": dict(suffix=".gif", codec="gif"),
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("videos")
    out = {}
    for name, case in VIDEO_CASES.items():
        case = dict(case)
        suffix, size = case.pop("suffix"), case.pop("size", (HEIGHT, WIDTH))
        out[name] = Path(write_video(folder / f"{name}{suffix}", coded_frames(FRAMES, *size), **case))
    return out


def policy_indices(timestamps: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "uniform8": UniformSampling(8).indices(timestamps),
        "uniform16": UniformSampling(16).indices(timestamps),
        "random_segments": RandomSegmentsSampling((8, 32)).indices(timestamps, rng=3),
        "instruction": InstructionSampling().indices(timestamps, complex_clip=True),
        "fps": FpsSampling(4.0, max_frames=64).indices(timestamps),
        "shuffled_with_repeats": np.array([77, 3, 3, 89, 0, 45, 44, 46, 12]),
        "all": np.arange(FRAMES),
    }


@pytest.mark.parametrize("name", list(VIDEO_CASES))
def test_every_policy_returns_exactly_the_requested_frames(videos, name):
    with VideoReader(videos[name]) as reader:
        assert reader.num_frames == FRAMES
        assert abs(reader.fps - 30) < 1
        for policy, indices in policy_indices(reader.timestamps).items():
            frames = reader.get_frames(indices)
            assert frames.dtype == np.uint8 and frames.shape[0] == len(indices)
            assert codes(frames) == indices.tolist(), (name, policy)


@pytest.mark.parametrize("name", ["mp4_bframes", "mp4_long_gop", "webm_vp9", "mp4_odd_size"])
def test_seeking_is_pixel_identical_to_sequential_decode(videos, name):
    reference = sequential_decode(videos[name])
    indices = np.array([0, 31, 29, 30, 59, 60, 88, 89, 5])
    with VideoReader(videos[name]) as reader:
        np.testing.assert_array_equal(reader.get_frames(indices), reference[indices])


@pytest.mark.parametrize("name", [n for n, case in VIDEO_CASES.items() if case["suffix"] in (".mp4", ".mov")])
def test_sample_table_index_equals_demuxed_index(videos, name):
    fast, slow = VideoReader(videos[name]), VideoReader(videos[name], fast_index=False)
    assert fast.index_source == "sample_table" and slow.index_source == "demux"
    np.testing.assert_array_equal(fast._pts, slow._pts)
    np.testing.assert_array_equal(fast._key_pts, slow._key_pts)
    np.testing.assert_array_equal(fast.timestamps, slow.timestamps)


def test_wrong_fast_index_is_rebuilt_not_trusted(videos):
    reader = VideoReader(videos["mp4_bframes"])
    reader._pts = reader._pts + 1  # a sample table whose timestamps the decoder never produces
    assert codes(reader.get_frames([3, 50, 89])) == [3, 50, 89]
    assert reader.index_source == "demux"


def test_variable_frame_rate_timestamps_and_uniform_instants(tmp_path):
    rng = np.random.default_rng(0)
    durations = np.where(np.arange(60) < 40, 1 / 60, rng.uniform(0.1, 0.4, 60))
    timestamps = np.concatenate([[0.0], np.cumsum(durations)[:-1]])
    path = write_video(tmp_path / "vfr.mp4", coded_frames(60, HEIGHT, WIDTH), timestamps=timestamps, gop_size=10)
    with VideoReader(path) as reader:
        assert reader.num_frames == 60 and reader.index_source == "demux"
        np.testing.assert_allclose(reader.timestamps, timestamps, atol=1e-4)
        indices = UniformSampling(8).indices(reader.timestamps)
        # Uniform in time: the slow tail (20 frames, most of the duration) gets most of the samples.
        assert (indices >= 40).sum() >= 6
        assert codes(reader.get_frames(indices)) == indices.tolist()
    sample = load_video(path, UniformSampling(8))
    np.testing.assert_allclose(sample.timestamps, timestamps[sample.indices], atol=1e-4)


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_metadata_is_applied(tmp_path, rotation):
    frames = coded_frames(12, HEIGHT, WIDTH)
    path = write_video(tmp_path / f"rot{rotation}.mp4", frames, rotation=rotation, gop_size=4)
    with VideoReader(path) as reader:
        got = reader.get_frames([0, 7, 11])
    # `rotation` is clockwise (phone convention): np.rot90 with negative k turns clockwise.
    turns = -rotation // 90
    assert got.shape[1:3] == np.rot90(frames[0], turns).shape[:2]
    assert codes(np.rot90(got, -turns, axes=(1, 2))) == [0, 7, 11]
    assert abs(got[0].astype(int) - np.rot90(frames[0], turns)).mean() < 8


def test_one_frame_video(tmp_path):
    path = write_video(tmp_path / "one.mp4", coded_frames(1, HEIGHT, WIDTH, start=1234))
    sample = load_video(path, UniformSampling(4))
    assert sample.total_frames == 1 and sample.indices.tolist() == [0, 0, 0, 0]
    assert codes(sample.frames) == [1234] * 4
    assert codes(load_video(path, FpsSampling(2.0)).frames) == [1234]


def test_demo_video_matches_full_sequential_decode(demo_video):
    with VideoReader(demo_video) as reader:
        assert reader.num_frames == 84
        cases = [
            UniformSampling(8).indices(reader.timestamps),
            UniformSampling(16).indices(reader.timestamps),
            RandomSegmentsSampling((8, 32)).indices(reader.timestamps, rng=0),
            np.array([83, 0, 41, 42, 40]),
        ]
        keep = sorted(set(np.concatenate(cases).tolist()))
        reference = dict(zip(keep, sequential_decode(demo_video, keep)))
        assert reference[0].shape == (800, 1920, 3)
        for indices in cases:
            expected = np.stack([reference[i] for i in indices.tolist()])
            np.testing.assert_array_equal(reader.get_frames(indices), expected)


# ------------------------------------------------------------------------------------------------------------
# Other sources: image files, folders, lists of frames, arrays, tensors, PIL
# ------------------------------------------------------------------------------------------------------------


def test_frame_sequences_and_arrays(tmp_path):
    import torch

    frames = coded_frames(20, HEIGHT, WIDTH)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames):  # natural order: frame_2 before frame_10
        Image.fromarray(frame).save(folder / f"frame_{i}.png")
    files = [folder / f"frame_{i}.png" for i in range(20)]
    expected = UniformSampling(8).indices(20).tolist()
    for source in (
        folder,
        files,
        [Image.fromarray(f) for f in frames],
        np.stack(frames),
        torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2),
        list(np.stack(frames)),
    ):
        sample = load_video(source, UniformSampling(8))
        assert sample.total_frames == 20 and sample.indices.tolist() == expected
        assert codes(sample.frames) == expected, type(source)
    image = load_video(files[5], UniformSampling(8))
    assert image.total_frames == 1 and codes(image.frames) == [5] * 8


# ------------------------------------------------------------------------------------------------------------
# Bad input: clear errors naming the file, never a hang, never silent black/repeated frames
# ------------------------------------------------------------------------------------------------------------


def _mp4_bytes(tmp_path) -> bytes:
    path = write_video(tmp_path / "good.mp4", coded_frames(60, 96, 128), gop_size=10)
    return Path(path).read_bytes()


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def bad_inputs(tmp_path) -> dict[str, tuple[Path, str]]:
    good = _mp4_bytes(tmp_path)
    cases = {}
    cases["missing"] = (tmp_path / "missing.mp4", "no such file")
    (tmp_path / "empty.mp4").write_bytes(b"")
    cases["zero_bytes"] = (tmp_path / "empty.mp4", "empty")
    (tmp_path / "truncated.mp4").write_bytes(good[: len(good) // 2])
    cases["truncated"] = (tmp_path / "truncated.mp4", "not a readable video")
    mdat, moov = good.find(b"mdat"), good.find(b"moov")
    corrupt = bytearray(good)
    start, length = mdat + 8 + (moov - mdat) // 3, (moov - mdat) // 3
    corrupt[start : start + length] = np.random.default_rng(0).integers(0, 256, length, dtype=np.uint8).tobytes()
    (tmp_path / "corrupt.mp4").write_bytes(bytes(corrupt))
    cases["corrupt"] = (tmp_path / "corrupt.mp4", "corrupt")
    cases["audio_only"] = (_audio_only(tmp_path / "audio.mp4"), "no video stream")
    (tmp_path / "notes.mp4").write_text("this is a text file, not a video\n" * 20)
    cases["text_renamed"] = (tmp_path / "notes.mp4", "not a readable video")
    (tmp_path / "unknown_codec.mp4").write_bytes(good.replace(b"avc1", b"zzz9"))
    cases["unsupported_codec"] = (tmp_path / "unknown_codec.mp4", "unsupported video codec")
    return cases


@pytest.mark.timeout(60)
def test_bad_inputs_raise_clear_errors(tmp_path):
    for case, (path, cause) in bad_inputs(tmp_path).items():
        start = time.perf_counter()
        with pytest.raises((VideoReadError, FileNotFoundError)) as info:
            sample = load_video(path, UniformSampling(8))
            # Reaching here would be a silent wrong answer: show what came back.
            pytest.fail(f"{case}: returned {sample.frames.shape} frames, codes {codes(sample.frames)}")
        message = str(info.value)
        assert str(path) in message, (case, message)
        assert cause in message, (case, message)
        assert time.perf_counter() - start < 5, f"{case}: took too long to fail"


def test_index_out_of_range_names_the_file(videos):
    with VideoReader(videos["mp4_short_gop"]) as reader:
        with pytest.raises(IndexError, match="mp4_short_gop"):
            reader.get_frames([0, FRAMES])


def test_writer_honours_gop_bframes_and_rotation(tmp_path):
    """tarsier_hf.dream_s.video_writer: the GOP length, B-frames and rotation asked for are what the file holds."""
    frames = coded_frames(40, HEIGHT, WIDTH)
    for gop, bframes in ((8, 0), (15, 2)):
        path = write_video(tmp_path / f"g{gop}.mp4", frames, gop_size=gop, max_b_frames=bframes)
        with av.open(path) as container:
            packets = [p for p in container.demux(video=0) if p.size]
        assert [i for i, p in enumerate(packets) if p.is_keyframe] == list(range(0, 40, gop))
        assert any(p.pts != p.dts for p in packets[1:]) == (bframes > 0)
    path = write_video(tmp_path / "rot.mov", frames[:3], rotation=90)
    with av.open(path) as container:
        assert next(container.decode(video=0)).rotation == -90  # counter-clockwise -90 = 90 clockwise
    with pytest.raises(ValueError, match="multiple of 90"):
        write_video(tmp_path / "bad.mp4", frames[:2], rotation=45)


# ------------------------------------------------------------------------------------------------------------
# Every container/codec pair PyAV writes here, with and without B-frames: exact frames, never "corrupt".
# The list is every pair that PyAV 18.1 (FFmpeg 8) on this machine writes into each accepted extension; a pair
# that stops being writable fails the test instead of vanishing from it.
# ------------------------------------------------------------------------------------------------------------

_BFRAME_CODECS = ["libx264:0", "libx264:2", "mpeg4:0", "mpeg4:2", "mpeg2video:0", "mpeg2video:2", "mpeg1video:0",
                  "mpeg1video:2"]
_HEVC = ["libx265:0", "libx265:2"]
CONTAINER_CODECS = {
    ".mp4": _BFRAME_CODECS + _HEVC + ["libvpx-vp9", "libsvtav1", "mjpeg", "ffv1", "png"],
    ".m4v": ["libx264:0", "libx264:2", "mpeg4:0", "mpeg4:2"],
    ".mov": _BFRAME_CODECS + _HEVC + ["mjpeg", "gif", "prores", "png", "msmpeg4", "qtrle"],
    ".mkv": _BFRAME_CODECS + _HEVC + ["libvpx", "libvpx-vp9", "libsvtav1", "mjpeg", "ffv1", "prores", "msmpeg4",
                                      "rawvideo"],
    ".webm": ["libvpx", "libvpx-vp9", "libsvtav1"],
    ".avi": _BFRAME_CODECS + ["libvpx", "libvpx-vp9", "libsvtav1", "mjpeg", "ffv1", "flv", "h263p", "huffyuv",
                              "png", "msmpeg4", "wmv2", "utvideo", "rawvideo"],
    ".ts": _BFRAME_CODECS + _HEVC,
    ".mpg": _BFRAME_CODECS + _HEVC + ["h263p"],
    ".mpeg": _BFRAME_CODECS + _HEVC + ["h263p"],
    ".flv": ["libx264:0", "libx264:2"] + _HEVC + ["libvpx-vp9", "libsvtav1", "flv"],
    ".gif": ["gif"],
}
_PIX_FMT = {"gif": "rgb8", "mjpeg": "yuvj420p", "prores": "yuv422p10le", "huffyuv": "yuv422p", "png": "rgb24",
            "qtrle": "rgb24"}
MATRIX = [(suffix, codec) for suffix, codecs in CONTAINER_CODECS.items() for codec in codecs]


@pytest.fixture(scope="module")
def matrix_videos(tmp_path_factory) -> dict[tuple[str, str], Path]:
    folder = tmp_path_factory.mktemp("matrix")
    frames = coded_frames(30, 64, 64)
    out = {}
    for suffix, entry in MATRIX:
        codec, _, bframes = entry.partition(":")
        path = folder / f"{codec}_{bframes or 'x'}{suffix}"
        write_video(path, frames, codec=codec, gop_size=None if codec == "gif" else 10,
                    max_b_frames=int(bframes) if bframes else None, pix_fmt=_PIX_FMT.get(codec))
        out[suffix, entry] = path
    return out


def decode_order(path) -> np.ndarray:
    """Reference: every frame in the order the decoder outputs it, front to back, no seeking."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


@pytest.mark.slow
@pytest.mark.parametrize("suffix,codec", MATRIX, ids=[f"{s[1:]}-{c}" for s, c in MATRIX])
def test_every_container_codec_pair_reads_exactly(matrix_videos, suffix, codec):
    path = matrix_videos[suffix, codec]
    if codec.endswith(":2") and suffix != ".avi":  # avi stores no presentation timestamps to compare
        with av.open(str(path)) as container:
            assert any(p.pts != p.dts for p in container.demux(video=0) if p.size), "no B-frames were written"
    reference = decode_order(path)
    assert codes(reference) == list(range(30))
    # FFmpeg probes PyAV's H.263 program stream as a raw H.263 stream: read in order, with a warning naming it.
    with pytest.warns(UserWarning, match="raw H.263") if codec == "h263p" and suffix != ".avi" else nullcontext():
        reader = VideoReader(path)
    with reader:
        assert reader.num_frames == 30
        for indices in ([0, 29], [5, 15, 25], [29, 0, 14, 14], [12], list(range(30))):
            np.testing.assert_array_equal(reader.get_frames(indices), reference[indices], err_msg=str(indices))


def _moov_first_mp4(path: Path, frames) -> bytes:
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = path.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")
    return data


def test_truncated_moov_first_mp4_reads_what_is_there_with_a_warning(tmp_path):
    rng = np.random.default_rng(0)  # noise keeps packets of similar size, so half the bytes hold ~half the frames
    frames = [np.clip(f.astype(int) + rng.integers(-30, 30, f.shape), 0, 255).astype(np.uint8)
              for f in coded_frames(60, 96, 128)]
    data = _moov_first_mp4(tmp_path / "whole.mp4", frames)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match=r"cut\.mp4: the file is truncated: its sample table lists 60 frames"):
        reader = VideoReader(cut)
    with reader:
        assert 20 <= reader.num_frames < 60
        assert codes(reader.get_frames(np.arange(reader.num_frames))) == list(range(reader.num_frames))
    with pytest.warns(UserWarning, match="truncated"):
        sample = load_video(cut, UniformSampling(8))
    assert codes(sample.frames) == sample.indices.tolist() and sample.indices[-1] == reader.num_frames - 1


def test_image_renamed_as_video_is_named(tmp_path):
    path = tmp_path / "still.mp4"
    Image.fromarray(coded_frames(1, HEIGHT, WIDTH)[0]).save(path, format="PNG")
    with pytest.raises(VideoReadError, match=r"still\.mp4: is a PNG image .*not a video"):
        load_video(path)


def test_raw_h264_stream_named_mp4_reads_in_order_with_a_warning(tmp_path):
    path = tmp_path / "raw.mp4"
    with av.open(str(path), "w", format="h264") as container:  # an elementary stream: no container, no timestamps
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.max_b_frames = 2
        for frame in coded_frames(30, HEIGHT, WIDTH):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.warns(UserWarning, match=r"raw\.mp4: is a raw H\.264 .*not a \.mp4 file"):
        sample = load_video(path, UniformSampling(8))
    assert sample.total_frames == 30 and codes(sample.frames) == sample.indices.tolist()


def test_repeated_frames_are_resized_once_not_copied_at_full_size(tmp_path, smollm2_dir):
    """A 2-frame 1024x1024 clip sampled to 32 frames: beyond what the same call costs on a 64x64 clip (the
    image processor's float work on 32 S x S frames), peak numpy memory stays near the two full-size frames."""
    import tracemalloc

    from transformers import AutoTokenizer

    from processing_tarsier import TarsierProcessor

    processor = TarsierProcessor.from_parts(AutoTokenizer.from_pretrained(smollm2_dir), "clip", frame_sampling=UniformSampling(32))

    def peak_bytes(side: int) -> int:
        path = write_video(tmp_path / f"clip{side}.mp4", coded_frames(2, side, side), gop_size=1)
        tracemalloc.start()
        try:
            out = processor(text="<video>\nDescribe.", videos=[path])
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            assert out["pixel_values"].shape == (32, 3, 336, 336)

    full = 1024 * 1024 * 3
    extra = peak_bytes(1024) - peak_bytes(64)
    assert extra < 4 * full, f"{extra / full:.1f} full-size frames held for 2 distinct frames"
