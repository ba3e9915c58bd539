"""`tarsier-serve` under hostile input (issue #36, the server half), on a real server on 127.0.0.1 with a tiny
random Tarsier: media that name other files, bodies and requests past every limit, malformed fields, special
files, and one maximal request beside a short one. Every input is made here; every network call has a timeout.

The server runs with small limits (below) so that each fault is reached in a fraction of a second; the defaults
are in docs/serving.md.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from tests.colour_clips import write_colour_clips
from tests.test_serving import start_server, stop_server

NAME = "tiny-tarsier"
REPO = Path(__file__).resolve().parents[1]
LIMITS = {"max_request_mb": 0.5, "max_tokens": 3000, "max_concurrent_generations": 2, "max_frame_pixels": 96 * 96,
          "max_request_pixels": 300_000, "max_frames_per_video": 16, "max_frames_per_request": 24,
          "max_stop_strings": 4, "max_stop_length": 32}
TIMEOUT = 60  # seconds, for every request of these tests


def write_clip(path: Path, side: int = 32, frames: int = 6, codec: str = "libx264", fmt: str | None = None) -> Path:
    """A small grey-ramp video written with PyAV (`fmt="h264"`: a raw elementary stream, no container)."""
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=6)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            frame = np.full((side, side, 3), 20 + 30 * i % 230, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def allowed(tmp_path_factory) -> Path:
    """The allowed media folder: colour clips, corrupt.mp4."""
    return write_colour_clips(tmp_path_factory.mktemp("allowed")) / "videos"


@pytest.fixture(scope="module")
def server(tiny_tarsier, allowed, tmp_path_factory):
    args = [str(tiny_tarsier[0]), "--trust_remote_code", "--served_model_name", NAME, "--device", "cpu",
            "--allowed_local_media_path", str(allowed)]
    for flag, value in LIMITS.items():
        args += [f"--{flag}", str(value)]
    process, url = start_server(args, tmp_path_factory.mktemp("logs") / "serve.log")
    yield urllib.parse.urlparse(url)
    stop_server(process)


def post(server, body: dict | bytes, timeout: float = TIMEOUT) -> tuple[int, dict]:
    """POST /v1/chat/completions; returns (status, JSON body)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    connection = http.client.HTTPConnection(server.hostname, server.port, timeout=timeout)
    try:
        connection.request("POST", "/v1/chat/completions", data, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def chat(content, **fields) -> dict:
    return {"model": NAME, "messages": [{"role": "user", "content": content}], "max_tokens": 4, "temperature": 0,
            **fields}


def video(url: str) -> dict:
    return {"type": "video_url", "video_url": {"url": url}}


def data_uri(payload: bytes, media_type: str = "video/mp4") -> str:
    return f"data:{media_type};base64," + base64.b64encode(payload).decode()


def assert_refused(status: int, body: dict, param: str, *words: str) -> str:
    """A 400 in OpenAI's error format naming `param`; returns the message."""
    assert status == 400, (status, body)
    error = body["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert param in error["message"] and all(word in error["message"] for word in words), error["message"]
    return error["message"]


# -- 1. media that name other files --------------------------------------------------------------------------


def test_playlists_and_scripts_in_data_uris_never_open_other_files(server, tmp_path):
    """An ffconcat script or an HLS playlist sent as a data: video names a real video outside the allowed folder
    (by absolute path, and by a relative name beside the server's temporary files): each is refused before any
    named file is opened, with the same answer whether the named file exists or not. Before the fix, the
    relative ffconcat entry was decoded (200) and a missing one answered differently (an existence oracle)."""
    outside = write_clip(tmp_path / "outside.mp4")
    beside = Path(tempfile.gettempdir()) / f"hostile-{uuid.uuid4().hex}.mp4"  # where data: URIs are written
    beside.write_bytes(outside.read_bytes())
    try:
        answers = {}
        for exists in (True, False):
            absolute = str(outside) if exists else str(tmp_path / "missing.mp4")
            relative = beside.name if exists else "hostile-missing.mp4"
            payloads = {
                "ffconcat, relative": f"ffconcat version 1.0\nfile {relative}\n",
                "ffconcat, absolute": f"ffconcat version 1.0\nfile {absolute}\n",
                "hls, absolute": f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n{absolute}\n#EXT-X-ENDLIST\n",
                "hls, file url": f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\nfile://{absolute}\n#EXT-X-ENDLIST\n",
            }
            for case, text in payloads.items():
                for media_type in ("video/mp4", "video/x-mpegurl"):
                    status, body = post(server, chat([video(data_uri(text.encode(), media_type))]))
                    assert status == 400, (case, media_type, status, body)
                    message = body["error"]["message"].split(": ", 2)[-1]  # the cause, without the URI's length
                    answers.setdefault((case, media_type), set()).add(message)
                    assert "ffconcat" not in case or "names other files" in message, message
        leaks = {case: causes for case, causes in answers.items() if len(causes) > 1}
        assert not leaks, leaks
    finally:
        beside.unlink()


def test_a_playlist_in_the_allowed_folder_cannot_reach_outside(server, allowed, tmp_path):
    """A playlist or script that lies inside the allowed folder but names a video outside it is refused by path
    too (before the fix the HLS playlist below was decoded: 200)."""
    outside = write_clip(tmp_path / "outside.mp4")
    (allowed / "list.m3u8").write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n{outside}\n#EXT-X-ENDLIST\n")
    (allowed / "list.ffconcat").write_text(f"ffconcat version 1.0\nfile ../{outside.name}\n")
    for name, kind in (("list.m3u8", "HLS playlist"), ("list.ffconcat", "ffconcat script")):
        status, body = post(server, chat([video(str(allowed / name))]))
        assert_refused(status, body, "messages[0].content[0].video_url.url", name, kind, "names other files")


def test_the_reader_opens_one_self_contained_file(tmp_path):
    """The reader itself (what describe, eval and training use too): an ffconcat script naming a video beside it
    and an image2 file-name pattern are refused; real containers and raw streams still read."""
    from frame_sampling_tarsier import UniformSampling
    from media_limits_tarsier import VideoReadError
    from media_loading_tarsier import load_video

    write_clip(tmp_path / "real.mp4")
    (tmp_path / "script.mp4").write_text("ffconcat version 1.0\nfile real.mp4\n")
    with pytest.raises(VideoReadError, match=r"script\.mp4: is an ffconcat script, which names other files"):
        load_video(tmp_path / "script.mp4")
    for i in range(3):
        Image.new("RGB", (16, 16), (i * 80, 0, 0)).save(tmp_path / f"img{i:03d}.png")
    (tmp_path / "img%03d.png.mkv").write_bytes((tmp_path / "img000.png").read_bytes())
    with pytest.raises(VideoReadError, match="is a PNG image"):
        load_video(tmp_path / "img%03d.png.mkv")
    raw = write_clip(tmp_path / "raw.mp4", fmt="h264")
    with pytest.warns(UserWarning, match="raw H.264"):
        assert load_video(raw, UniformSampling(3)).frames.shape == (3, 32, 32, 3)


# -- 4. special files ------------------------------------------------------------------------------------------


def test_a_fifo_is_named_and_never_opened(server, allowed):
    fifo = allowed / "pipe.mp4"
    os.mkfifo(fifo)  # nobody writes to it: opening it for reading would block
    try:
        started = time.monotonic()
        status, body = post(server, chat([video(str(fifo))]), timeout=20)
        assert_refused(status, body, "messages[0].content[0].video_url.url", "pipe.mp4", "named pipe (FIFO)")
        assert time.monotonic() - started < 10
    finally:
        fifo.unlink()


def test_an_unreadable_file_says_permission_denied():
    """Read as an unprivileged user (root reads any file, so the test drops to `nobody` when run as root)."""
    folder = Path(tempfile.mkdtemp(prefix="tarsier-unreadable-"))
    try:
        folder.chmod(0o755)
        clip = write_clip(folder / "locked.mp4")
        clip.chmod(0o000)
        # the interpreter may lie under a folder only root can enter: drop to `nobody` once it has started
        code = ("import os, sys; from media_loading_tarsier import load_video\n"
                "if os.geteuid() == 0:\n    os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
                "try:\n    load_video(sys.argv[1])\nexcept Exception as error:\n    print(error)")
        result = subprocess.run([sys.executable, "-c", code, str(clip)], capture_output=True, text=True, timeout=60,
                                cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert f"{clip}: permission denied" in result.stdout, (result.stdout, result.stderr[-2000:])
    finally:
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()


# -- 2. bounded cost -----------------------------------------------------------------------------------------


def test_a_chunked_body_over_the_limit_is_refused_while_it_arrives(server):
    """A chunked body (no Content-Length) is counted as it arrives: 413 once it passes --max_request_mb, without
    waiting for its end (the old server read it whole, then answered 400 for the bad JSON)."""
    limit = int(LIMITS["max_request_mb"] * 2**20)
    with socket.create_connection((server.hostname, server.port), timeout=20) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 65536
        sent = 0
        try:
            while sent <= limit + len(chunk):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the client finished: what a limit should do
        reply = b""
        while not reply.endswith(b"0\r\n\r\n"):  # the whole (chunked) answer, or until the server closes
            data = sock.recv(65536)
            if not data:
                break
            reply += data
    assert reply.startswith(b"HTTP/1.1 413") and b"--max_request_mb" in reply, reply[:400]
    connection = http.client.HTTPConnection(server.hostname, server.port, timeout=TIMEOUT)
    try:  # a chunked body under the limit is answered as usual
        body = json.dumps(chat("Say hello.")).encode()
        connection.request("POST", "/v1/chat/completions", iter([body[:10], body[10:]]),
                           {"Content-Type": "application/json"}, encode_chunked=True)
        assert connection.getresponse().status == 200
    finally:
        connection.close()


def test_a_declared_body_over_the_limit_is_refused_unread(server):
    connection = http.client.HTTPConnection(server.hostname, server.port, timeout=20)
    try:
        connection.putrequest("POST", "/v1/chat/completions")
        connection.putheader("Content-Length", str(int(LIMITS["max_request_mb"] * 2**20) + 1))
        connection.endheaders()  # and no body: the answer comes from the header alone
        response = connection.getresponse()
        assert response.status == 413 and b"--max_request_mb" in response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("options, param, words", [
    ({"num_frames": 100_000}, "mm_processor_kwargs", ["100000", "--max_frames_per_video"]),
    ({"frame_sampling": {"policy": "fps", "fps": 1, "max_frames": 10**6}}, "mm_processor_kwargs",
     ["--max_frames_per_video"]),
    ({"fps": 30}, "mm_processor_kwargs", ["--max_frames_per_video"]),  # fps keeps its 64-frame cap
    ({"num_frames": 0}, "mm_processor_kwargs.num_frames", ["greater than or equal to 1"]),
    ({"fps": -1}, "mm_processor_kwargs.fps", ["greater than 0"]),
    ({"frame_sampling": {"policy": "nope"}}, "mm_processor_kwargs.frame_sampling", ["unknown frame sampling"]),
    ({"num_frames": 4, "fps": 1}, "mm_processor_kwargs", ["mutually exclusive"]),  # the processors' rule
])
def test_frame_counts_over_the_limits_are_refused_before_decoding(server, allowed, options, param, words):
    status, body = post(server, chat([video(str(allowed / "red.mp4"))], mm_processor_kwargs=options))
    assert_refused(status, body, param, *words)


def test_too_many_frames_in_one_request(server, allowed):
    content = [video(str(allowed / f"{colour}.mp4")) for colour in ("red", "green", "blue", "white")]
    status, body = post(server, chat(content))  # 4 videos x 8 frames = 32 > 24
    assert_refused(status, body, "messages", "32 frames", "--max_frames_per_request")
    assert post(server, chat(content[:3]))[0] == 200


def test_frames_over_the_pixel_limits_are_refused(server, tmp_path):
    """By the stream header (128 x 128 > 96 x 96), by the decoder when a raw stream grows mid-way (32 x 32, then
    128 x 128: the header says 32 x 32), and by the request's total of decoded pixels (200 frames of 64 x 64 in one
    GOP: every frame is decoded to reach the last)."""
    big = write_clip(tmp_path / "big.mp4", side=128)
    growing = (write_clip(tmp_path / "a.h264", 32, fmt="h264").read_bytes()
               + write_clip(tmp_path / "b.h264", 128, fmt="h264").read_bytes())
    long = tmp_path / "long.mp4"
    from tarsier_hf.dream_s.video_writer import write_video

    write_video(long, [np.full((64, 64, 3), i, np.uint8) for i in range(200)], gop_size=200, max_b_frames=0)
    url = "messages[0].content[0].video_url.url"
    for payload, words in ((big.read_bytes(), ["128x128", "--max_frame_pixels"]),
                           (growing, ["128x128", "--max_frame_pixels"]),
                           (long.read_bytes(), ["300000 decoded pixels", "--max_request_pixels"])):
        status, body = post(server, chat([video(data_uri(payload))]))
        assert_refused(status, body, url, *words)


def test_a_video_claiming_a_billion_seconds_sampled_by_fps(server, tmp_path):
    """A 700-byte mkv whose second frame is at 10^9 s, sampled at 1 fps: refused at once (sampling by rate looked
    at every second of it: 10^9 instants, 8 GB)."""
    path = tmp_path / "forever.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=1)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for i, pts in enumerate((0, 10**12)):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 60 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    by_rate = {"frame_sampling": {"policy": "fps", "fps": 1, "max_frames": 8}}
    status, body = post(server, chat([video(data_uri(path.read_bytes(), "video/x-matroska"))],
                                     mm_processor_kwargs=by_rate), timeout=20)
    assert_refused(status, body, "messages[0].content[0].video_url.url", "1e+09 instants", "1000000000 s")


def test_a_decompression_bomb_png_is_a_400_naming_the_field(server):
    """A 60-byte PNG whose header says 16000 x 16000 (768 MB of RGB): refused from its header, never decoded
    (before: PIL's DecompressionBombError escaped as a bare 500)."""

    def png_chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    def png(side: int) -> bytes:
        header = side.to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
        return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0"))
                + png_chunk(b"IEND", b""))

    for side, words in ((16000, ["decompression bomb"]), (128, ["128x128", "--max_frame_pixels"])):
        part = {"type": "image_url", "image_url": {"url": data_uri(png(side), "image/png")}}
        status, body = post(server, chat([{"type": "text", "text": "What is it?"}, part]))
        assert_refused(status, body, "messages[0].content[1].image_url.url", *words)


def test_stop_strings_and_max_tokens_over_the_limits(server):
    assert_refused(*post(server, chat("hi", stop=[f"s{i}" for i in range(300)])), "stop", "--max_stop_strings")
    assert_refused(*post(server, chat("hi", stop=["x" * 10_000])), "stop", "--max_stop_length")
    assert_refused(*post(server, chat("hi", max_tokens=10**9)), "max_tokens", "--max_tokens")
    assert post(server, chat("hi", stop=["a", "b", "c", "d"]))[0] == 200


def timed_post(server, body: dict, timeout: float = TIMEOUT) -> tuple[int, float]:
    started = time.monotonic()
    status, _ = post(server, body, timeout)
    return status, time.monotonic() - started


@pytest.mark.slow
def test_a_short_request_is_answered_beside_a_maximal_one(server):
    """Generations run side by side on --max_concurrent_generations threads: a 4-token request sent while a
    3,000-token one generates is answered in a fraction of the long one's time (one generation thread at a time
    made it wait for all of it)."""
    alone = timed_post(server, chat("Say hello.", max_tokens=4))[1]
    long = {}
    worker = threading.Thread(target=lambda: long.update(zip(("status", "time"), timed_post(
        server, chat("Say hello.", max_tokens=3000, stop=None)))))
    worker.start()
    time.sleep(1.0)  # the long request is generating
    status, short = timed_post(server, chat("Say hello.", max_tokens=4))
    still_running = worker.is_alive()
    worker.join(TIMEOUT)
    assert status == 200 and long["status"] == 200
    assert still_running and short < 0.25 * long["time"], (alone, short, long)


@pytest.mark.slow
def test_abandoned_non_streaming_requests_stop_generating(server):
    """Clients of two 3,000-token non-streaming requests give up after 1 s; their generations stop, so both
    threads are free for the next request (without the cancel it would wait for ~6,000 abandoned tokens)."""
    started = time.monotonic()
    assert timed_post(server, chat("Say hello.", max_tokens=3000))[0] == 200
    whole = time.monotonic() - started
    answered = []

    def abandon():
        try:
            answered.append(post(server, chat("Say hello.", max_tokens=3000), timeout=1.0))
        except OSError:  # the client's timeout: it closes the connection
            pass

    threads = [threading.Thread(target=abandon) for _ in range(LIMITS["max_concurrent_generations"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    time.sleep(0.5)  # the server notices a closed connection within its 0.2 s poll
    status, short = timed_post(server, chat("Say hello.", max_tokens=4))
    assert not answered and status == 200 and short < 0.3 * whole, (answered, short, whole)


def test_a_seed_gives_the_same_answer_beside_other_sampling(server):
    """Sampling draws from the request's own generator: generations running side by side share torch's global one,
    which would make a seed depend on what else runs."""
    seeded = chat("Say hello.", max_tokens=24, temperature=1.0, seed=7)
    alone = post(server, seeded)[1]["choices"][0]["message"]["content"]
    worker = threading.Thread(target=post, args=(server, chat("Say hello.", max_tokens=600, temperature=1.0)))
    worker.start()
    time.sleep(0.5)
    beside = post(server, seeded)[1]["choices"][0]["message"]["content"]
    worker.join(TIMEOUT)
    assert beside == alone and alone != post(server, {**seeded, "seed": 8})[1]["choices"][0]["message"]["content"]


# -- 3. malformed fields ---------------------------------------------------------------------------------------


def test_a_body_that_is_not_json_is_a_400(server):
    assert_refused(*post(server, b'{"model": "tiny-tarsier", "messages": [}'), "body", "JSON")


@pytest.mark.parametrize("change, param", [
    ({"messages": "hi"}, "messages"),
    ({"messages": ["hi"]}, "messages[0]"),
    ({"messages": [{"role": ["user"], "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": ["hi"]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": ["a", "b"]}]}]},
     "messages[0].content[0].text"),
    ({"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": ["a.mp4"]}}]}]},
     "messages[0].content[0].video_url.url"),
    ({"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "red.mp4\x00.txt"}}]}]},
     "messages[0].content[0].video_url.url"),
    ({"model": ["tiny-tarsier"]}, "model"),
    ({"seed": 2**70}, "seed"),
    ({"temperature": "hot"}, "temperature"),
    ({"max_tokens": "many"}, "max_tokens"),
    ({"stop": [1, 2]}, "stop"),
    ({"stream": "yes"}, "stream"),
    ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    ({"mm_processor_kwargs": {"num_frames": "eight"}}, "mm_processor_kwargs.num_frames"),
    ({"mm_processor_kwargs": {"frame_sampling": 5}}, "mm_processor_kwargs.frame_sampling"),
])
def test_a_malformed_field_is_a_400_naming_it(server, allowed, change, param):
    body = {**chat("hi"), **change}
    if "\x00" in json.dumps(body) or "red.mp4" in json.dumps(body):
        url = body["messages"][0]["content"][0]["video_url"]
        if isinstance(url["url"], str):
            url["url"] = str(allowed / url["url"])
    assert_refused(*post(server, body), param)
