"""Tarsier's video reader: exact, keyframe-aware PyAV frame access by index (timestamps, rotation, clear errors).

Remote code that travels with every checkpoint (imported relatively by the media loader); it depends only on PyAV
and numpy. Files are opened by `media_limits_tarsier.open_video` (allow-listed demuxers, the current
`MediaLimits`), and every decoded frame is counted against those limits.

transformers' PyAV backend (`transformers.video_utils`) decodes every frame up to the last wanted one; this reader
lists the frames without decoding, seeks to the keyframe before each wanted GOP and decodes only from there.
"""

from __future__ import annotations

import bisect
import os
import warnings
from pathlib import Path
from typing import Callable, Sequence

import av
import numpy as np

try:  # copied next to a checkpoint by transformers (remote code)
    from .frame_sampling_tarsier import frame_duration
    from .media_limits_tarsier import (
        ALLOWED_DEMUXERS, VideoReadError, check_file, current_media_limits, describe_error, open_video,
    )
except ImportError:  # installed as top-level modules of this repo
    from frame_sampling_tarsier import frame_duration
    from media_limits_tarsier import (
        ALLOWED_DEMUXERS, VideoReadError, check_file, current_media_limits, describe_error, open_video,
    )


def _apply_rotation(array: np.ndarray, rotation: float | int | None) -> np.ndarray:
    """Turn a decoded `(H, W, 3)` frame as a player would show it (`rotation`: counter-clockwise degrees)."""
    if not rotation:
        return array
    turns = int(round(rotation / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(array, k=turns)) if turns else array


# Demuxer flags (libavformat/avformat.h): the format stores no timestamps (raw elementary streams), or its seek
# targets are presentation timestamps (mp4/mov). Other demuxers (mpegts, mpeg-ps, avi, flv) seek by decode time.
_AVFMT_NOTIMESTAMPS = 0x80
_AVFMT_SEEK_TO_PTS = 0x4000000
# Containers that store no presentation timestamps: the decoder's frame.pts are guesses (with B-frames they come
# out of order), so frames are identified by their position in decode output.
_FORMATS_WITHOUT_PTS = ("avi",)
# What each accepted extension should hold (substrings of PyAV's `container.format.name`).
_EXPECTED_FORMATS = {
    ".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi",
    ".gif": "gif", ".ts": "mpegts", ".mpg": "mpeg", ".mpeg": "mpeg", ".flv": "flv",
}


class VideoReader:
    """Exact random access to the frames of one video file with PyAV.

    Opening lists every frame's presentation timestamp and the keyframes without decoding anything: from the
    mp4/mov sample table when the stream has a constant frame rate and the file holds every sample the table
    lists (no file data read, so opening costs the same for a 10 s and a 10 min clip), otherwise by demuxing the
    video stream once. `get_frames` then decodes only what it needs: it seeks to a keyframe only when the next
    wanted frame lies in a later GOP than the decoder's position (by the keyframe's decode timestamp on demuxers
    that seek by decode time: mpegts, mpeg-ps, flv), decodes forward (skipping unreferenced frames it does not
    return), and converts to RGB only the frames it returns.

    Frames are identical to a full sequential decode, where frame `i` is the `i`-th frame the decoder outputs
    (checked in tests/test_video_reader.py on every container/codec pair PyAV writes). When a seek cannot be
    trusted the reader decodes sequentially instead, which is exact, just slower: on containers without
    presentation timestamps (avi, raw elementary streams), and, from then on, whenever a seek lands somewhere the
    index does not predict. A decoded timestamp that contradicts the sample-table index makes the reader rebuild
    the index by demuxing first.

    Attributes:
        path: the file.
        num_frames: T, the number of frames.
        timestamps: `(T,)` float64 presentation times in seconds, relative to the first frame.
        fps: average frame rate (T / duration).
        rotation: display rotation (counter-clockwise degrees) applied to returned frames.
        index_source: `"sample_table"` or `"demux"`, how the frame list was built.
        sequential: True when frames are read by decoding from the start (no seeking).
    """

    def __init__(self, path: str | os.PathLike, apply_rotation: bool = True, fast_index: bool = True):
        self.path = str(path)
        self.apply_rotation = apply_rotation
        check_file(self.path)
        self._container = open_video(self.path)
        try:
            self._open_stream(fast_index)
        except BaseException:
            self._container.close()
            raise

    def _open_stream(self, fast_index: bool) -> None:
        container = self._container
        self._check_format()
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["no"]
            raise VideoReadError(f"{self.path}: has no video stream (found {', '.join(kinds)} streams)")
        stream = container.streams.video[0]
        if stream.codec_context is None or stream.codec_context.codec is None:
            raise VideoReadError(f"{self.path}: unsupported video codec (no decoder for stream 0)")
        current_media_limits().check_frame(stream.codec_context.width, stream.codec_context.height, self.path)
        self._stream = stream
        self.time_base = float(stream.time_base) if stream.time_base else 1.0
        flags = int(container.format.flags)
        self._raw = bool(flags & _AVFMT_NOTIMESTAMPS)
        self._seek_by_dts = not flags & _AVFMT_SEEK_TO_PTS
        self._seekable = container.format.name not in ("gif", "image2", "apng") and not self._raw
        self.sequential = self._raw or container.format.name in _FORMATS_WITHOUT_PTS or not self._seekable
        self.rotation = 0
        if not (fast_index and self._index_from_sample_table()):
            self._index_by_demuxing()

    def _check_format(self) -> None:
        """Check the demuxer; warn on raw streams without a container (they read, without
        timing). Images renamed as videos never get here: their demuxers are not allow-listed (`open_video`)."""
        fmt = self._container.format
        suffix = Path(self.path).suffix.lower()
        if not set(fmt.name.split(",")) & set(ALLOWED_DEMUXERS):  # FFmpeg enforces this already; never decode past it
            raise VideoReadError(f"{self.path}: opened with demuxer {fmt.name}, which is not allow-listed")
        expected = _EXPECTED_FORMATS.get(suffix)
        if int(fmt.flags) & _AVFMT_NOTIMESTAMPS:
            as_named = f", not a {suffix} file" if expected and expected not in fmt.name else ""
            warnings.warn(
                f"{self.path}: is a {fmt.long_name or fmt.name} ({fmt.name}){as_named}: it stores no timestamps, so "
                "frames are read in decode order at the stream's nominal frame rate",
                stacklevel=4,
            )

    def _set_index(self, pts: np.ndarray, key_pts: np.ndarray, source: str, key_dts: np.ndarray | None = None) -> None:
        self._pts = pts
        self._key_pts = key_pts
        # Seek target of every keyframe: its decode timestamp on demuxers that seek by decode time.
        self._key_seek = key_dts if key_dts is not None and self._seek_by_dts else key_pts
        # A stream that starts without a keyframe (cut files) still decodes from its first packet.
        if self._key_pts[0] > self._pts[0]:
            self._key_pts = np.concatenate([[self._pts[0]], self._key_pts])
            self._key_seek = np.concatenate([[self._pts[0]], self._key_seek])
        self.timestamps = (self._pts - self._pts[0]).astype(np.float64) * self.time_base
        self.num_frames = len(self._pts)
        duration = self.timestamps[-1] + frame_duration(self.timestamps) if self.num_frames > 1 else 0.0
        self.fps = self.num_frames / duration if duration > 0 else float(self._stream.average_rate or 0) or 0.0
        self.index_source = source

    def _index_by_demuxing(self) -> None:
        """Frame list from the packets of the video stream (reads the file once, decodes nothing)."""
        self._reopen()
        pts_list, key_pts, key_dts, count = [], [], [], 0
        try:
            for packet in self._container.demux(self._stream):
                # Discard-flagged packets (edit lists cutting leading frames) decode to frames nobody sees; a
                # corrupt-flagged one is the partial last packet of a truncated file, which is not decoded.
                if packet.size == 0 or packet.is_discard or packet.is_corrupt:
                    continue
                count += 1
                pts = packet.pts if packet.pts is not None else packet.dts
                if pts is None:
                    continue
                pts_list.append(pts)
                if packet.is_keyframe:
                    key_pts.append(pts)
                    key_dts.append(packet.dts if packet.dts is not None else pts)
        except av.error.FFmpegError as error:
            raise VideoReadError(f"{self.path}: corrupt or truncated video stream ({describe_error(error)})") from None
        if not count:
            raise VideoReadError(f"{self.path}: the video stream holds no frames (empty or truncated file)")
        if self._raw or len(pts_list) != count:
            # Raw elementary streams carry no (or only some) timestamps: frames at the nominal rate, in decode
            # order, read sequentially.
            rate = self._stream.average_rate or self._stream.guessed_rate or 25
            self.time_base = 1.0 / float(rate)
            self.sequential = True
            pts = np.arange(count, dtype=np.int64)
            self._set_index(pts, pts[:1], "demux")
            return
        pts = np.unique(np.asarray(pts_list, dtype=np.int64))
        if not key_pts:
            self._set_index(pts, pts[:1], "demux")
            return
        order = np.argsort(key_pts, kind="stable")
        self._set_index(
            pts, np.asarray(key_pts, dtype=np.int64)[order], "demux", np.asarray(key_dts, dtype=np.int64)[order]
        )

    def _index_from_sample_table(self) -> bool:
        """Frame list from the mp4/mov sample table, for constant-frame-rate streams; False when not applicable.

        The table gives decode timestamps and keyframe flags. With evenly spaced decode timestamps the
        presentation timestamps are the same grid shifted by the reorder delay, which the first packet gives
        (its pts - dts). Anything irregular falls back to demuxing, and so does a table that lists samples past
        the end of the file (a truncated download: the frames that are there still read, with a warning).
        """
        if "mp4" not in self._container.format.name:
            return False
        entries = self._stream.index_entries
        count = len(entries)
        if count < 2:
            return False
        end = max(e.pos + e.size for e in entries)
        if end > os.path.getsize(self.path):
            warnings.warn(
                f"{self.path}: the file is truncated: its sample table lists {count} frames ending at byte {end}, "
                f"but the file has {os.path.getsize(self.path)} bytes; reading the frames that are there",
                stacklevel=4,
            )
            return False
        dts = np.fromiter((e.timestamp for e in entries), dtype=np.int64, count=count)
        keyframe = np.fromiter((e.is_keyframe for e in entries), dtype=bool, count=count)
        discard = np.fromiter((e.is_discard for e in entries), dtype=bool, count=count)
        if discard.any():
            return False
        steps = np.diff(dts)
        if steps[0] <= 0 or np.any(steps != steps[0]):
            return False
        try:
            first = [p for p, _ in zip(self._container.demux(self._stream), range(32)) if p.pts is not None]
        except av.error.FFmpegError:
            return False
        if not first or first[0].dts != dts[0] or not first[0].is_keyframe:
            return False
        delay = int(first[0].pts) - int(dts[0])
        if min(int(p.pts) for p in first) != dts[0] + delay:
            return False
        self._set_index(dts + delay, dts[keyframe] + delay, "sample_table")
        return True

    # -- public API ---------------------------------------------------------------------------------------------

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self.num_frames

    def get_frames(
        self, indices: Sequence[int] | np.ndarray, transform: Callable[[np.ndarray], np.ndarray] | None = None
    ) -> np.ndarray:
        """Decode the frames at `indices` (any order, repeats allowed).

        Args:
            indices: frame indices in `[0, num_frames)`.
            transform: applied once to every distinct decoded `(H, W, 3)` frame (after rotation) before repeated
                indices are copied, e.g. a resize: memory then holds one full-size frame at a time.

        Returns:
            `(len(indices), H, W, 3)` uint8 RGB frames (rotated for display when the file says so), or the
            stacked outputs of `transform`.
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) == 0:
            raise ValueError(f"{self.path}: no frame indices requested")
        if indices.min() < 0 or indices.max() >= self.num_frames:
            raise IndexError(f"{self.path}: frame index out of range [0, {self.num_frames}): {indices.tolist()}")
        wanted = np.unique(indices)
        self._transform = transform
        decoded = None
        if not self.sequential:
            try:
                decoded = self._decode_pts([int(p) for p in self._pts[wanted]])
            except VideoReadError:
                if self.index_source == "sample_table":
                    decoded = self._retry_with_demuxed_index(wanted)
            if decoded is None:
                # The seek did not land where the index says (demuxer quirks): a sequential decode is exact.
                self.sequential = True
        if decoded is None:
            decoded = self._decode_in_order(wanted.tolist())
        by_index = dict(zip(wanted.tolist(), decoded))
        return np.stack([by_index[i] for i in indices.tolist()])

    def _retry_with_demuxed_index(self, wanted: np.ndarray) -> list[np.ndarray] | None:
        """The sample-table index guessed a timestamp the decoder does not produce: rebuild it from the packets and
        retry; positions stay valid when the frame count agrees."""
        count = self.num_frames
        self._index_by_demuxing()
        if self.num_frames != count:
            raise VideoReadError(
                f"{self.path}: the sample table lists {count} frames but the stream holds {self.num_frames}; "
                "open the reader again and resample"
            ) from None
        if self.sequential:
            return None
        try:
            return self._decode_pts([int(p) for p in self._pts[wanted]])
        except VideoReadError:
            return None

    # -- decoding -----------------------------------------------------------------------------------------------

    def _keyframe_before(self, pts: int, skip: int = 0) -> int | None:
        position = bisect.bisect_right(self._key_pts, pts) - 1 - skip
        return int(self._key_pts[position]) if position >= 0 else None

    def _seek(self, key_pts: int) -> None:
        target = int(self._key_seek[int(np.searchsorted(self._key_pts, key_pts))])
        try:
            self._container.seek(target, stream=self._stream, backward=True, any_frame=False)
        except av.error.FFmpegError as error:
            raise VideoReadError(f"{self.path}: seek to pts {key_pts} failed ({describe_error(error)})") from None

    def _rewind(self) -> None:
        """Back to the first packet: reopen containers that cannot seek (gif), seek in the others."""
        if self._seekable:
            self._seek(int(self._key_pts[0]))
        else:
            self._reopen()

    def _reopen(self) -> None:
        self._container.close()
        self._container = open_video(self.path)
        self._stream = self._container.streams.video[0]

    def _frames_from(self, key_pts: int, wanted: set[int]):
        """Decoded frames from keyframe `key_pts` onwards (from the first frame when the file cannot seek).

        Packets of frames that are not wanted are decoded with `skip_frame="NONREF"`: frames no other frame
        references (most B-frames) are then not decoded at all, which roughly halves the work on B-frame streams
        without changing any decoded pixel.
        """
        if self._seekable and key_pts != int(self._key_pts[0]):
            self._seek(key_pts)
        else:
            self._rewind()
        codec_context = self._stream.codec_context
        try:
            for packet in self._container.demux(self._stream):
                if packet.is_corrupt:
                    continue
                skip = "DEFAULT" if packet.pts is None or packet.pts in wanted else "NONREF"
                if codec_context.skip_frame != skip:
                    codec_context.skip_frame = skip
                yield from self._decode_packet(packet)
        except av.error.FFmpegError as error:
            raise VideoReadError(f"{self.path}: corrupt or truncated video data ({describe_error(error)})") from None

    def _decode_packet(self, packet: av.Packet):
        """The frames of one packet, each counted against the current `MediaLimits`. The decoder itself refuses a
        frame over `max_frame_pixels` (a stream whose size grows mid-way); that refusal is reported as the limit."""
        limits = current_media_limits()
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            context = self._stream.codec_context
            limits.check_frame(context.width, context.height, self.path)
            raise
        for frame in frames:
            limits.charge(frame.width, frame.height, self.path)
            yield frame

    def _to_rgb(self, frame: av.VideoFrame) -> np.ndarray:
        # one swscale thread: with FFmpeg's automatic thread pool, a reader in a forked DataLoader worker could wait
        # forever on pool threads that only exist in the parent (seen as an idle worker in `to_ndarray`)
        array = frame.to_ndarray(format="rgb24", threads=1)
        if self.apply_rotation:
            self.rotation = frame.rotation or 0
            array = _apply_rotation(array, self.rotation)
        return self._transform(array) if self._transform is not None else array

    def _decode_in_order(self, wanted: list[int]) -> list[np.ndarray]:
        """Decode from the first frame and keep the frames at the given (sorted, unique) output positions."""
        self._reopen()
        out: list[np.ndarray] = []
        position = 0
        try:
            for packet in self._container.demux(self._stream):
                if packet.is_corrupt:
                    continue
                for frame in self._decode_packet(packet):
                    if position == wanted[len(out)]:
                        out.append(self._to_rgb(frame))
                        if len(out) == len(wanted):
                            return out
                    position += 1
        except av.error.FFmpegError as error:
            raise VideoReadError(f"{self.path}: corrupt or truncated video data ({describe_error(error)})") from None
        raise VideoReadError(
            f"{self.path}: the stream ended after {position} decoded frames, before frame {wanted[len(out)]} of "
            f"{self.num_frames}; the file is truncated or corrupt"
        )

    def _decode_pts(self, wanted: list[int]) -> list[np.ndarray]:
        """Decode the frames with the given (sorted, unique) pts, seeking only across GOPs."""
        out: list[np.ndarray] = []
        wanted_set = set(wanted)
        i = 0
        backoff = 0
        while i < len(wanted):
            key = self._keyframe_before(wanted[i], skip=backoff)
            if key is None or not self._seekable:
                key = int(self._key_pts[0])
            frames = self._frames_from(key, wanted_set)
            progressed = False
            overshot = False
            last_pts = None
            for frame in frames:
                pts = frame.pts if frame.pts is not None else frame.dts
                if pts is None:
                    raise VideoReadError(f"{self.path}: decoded a frame without timestamp")
                if last_pts is None and pts > wanted[i]:
                    # Seeking landed after the wanted frame (e.g. open-GOP leading frames were dropped).
                    overshot = True
                    break
                last_pts = pts
                if pts < wanted[i]:
                    continue
                if pts > wanted[i]:
                    raise VideoReadError(
                        f"{self.path}: frame at pts {wanted[i]} could not be decoded (the stream is corrupt or "
                        f"truncated; the decoder went from before it to pts {pts})"
                    )
                out.append(self._to_rgb(frame))
                i += 1
                progressed = True
                if i == len(wanted):
                    break
                # Seek forward only when the next wanted frame is in a later GOP than the one being decoded.
                next_key = self._keyframe_before(wanted[i])
                if self._seekable and next_key is not None and next_key > pts:
                    break
            else:
                if i < len(wanted):
                    raise VideoReadError(
                        f"{self.path}: the stream ended before the frame at pts {wanted[i]} "
                        f"(frame {int(np.searchsorted(self._pts, wanted[i]))} of {self.num_frames}); "
                        "the file is truncated or corrupt"
                    )
            frames.close()
            if overshot and not progressed:
                backoff += 1
                if backoff > 3 or self._keyframe_before(wanted[i], skip=backoff) is None:
                    raise VideoReadError(f"{self.path}: cannot reach the frame at pts {wanted[i]} by seeking")
            else:
                backoff = 0
        return out


__all__ = ["VideoReader"]
