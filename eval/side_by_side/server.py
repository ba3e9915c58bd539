"""The annotation web server (standard library only), bound to 127.0.0.1.

Routes:
    GET  /                          the page (static/index.html; `?annotator=NAME` picks the label file)
    GET  /static/<file>             the page's JS and CSS
    GET  /api/session?annotator=X   the annotator's pairs as they see them (A/B texts, no model names) + their labels
    POST /api/label                 `{"annotator", "pair", "label": "A"|"B"|"same", "elapsed_s"}`; fsynced before 200
    GET  /video/<pair>              the pair's video file, with HTTP Range support (206 / 416)
    GET  /frames/<pair>/<k>.jpg     the k-th of `frames` evenly spaced thumbnails of the video

Hostile input is answered, never fatal: only files inside the session's video folder are served (403 otherwise),
a label body is at most `MAX_BODY` bytes (413) and must arrive within `request_timeout` seconds (408), every
socket read and write times out after `request_timeout`, a Range that no byte satisfies gets 416, JSON that is
too deeply nested or holds NaN/Infinity gets 400.
"""

from __future__ import annotations

import errno
import json
import math
import mimetypes
import os
import re
import sys
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from .frames import video_thumbnails
from .labels import LabelError, LabelStore, check_annotator
from .results import is_inside
from .session import Session, SessionError

HOST = "127.0.0.1"
STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
VIDEO_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".webm": "video/webm", ".mkv": "video/x-matroska",
               ".mov": "video/quicktime", ".ogv": "video/ogg", ".avi": "video/x-msvideo", ".gif": "image/gif"}
RANGE_PATTERN = re.compile(r"^bytes=(\d*)-(\d*)$")
CHUNK = 1 << 16
MAX_BODY = 1 << 16  # a label is about 100 bytes
MAX_DIGITS = 18  # byte positions beyond 10**18 are past the end of any file (and int() refuses 4300+ digits)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """Byte range `(start, end_inclusive)` of a `Range` header for a body of `size` bytes.

    Returns `None` to send the whole body (no header, several ranges or a syntax we ignore, as RFC 9110
    allows) and `"unsatisfiable"` for a range that starts past the end (answered with 416).
    """
    if not header:
        return None
    match = RANGE_PATTERN.match(header.strip())
    if not match or match.group(1) == match.group(2) == "":
        return None
    first, last = (group.lstrip("0") or ("0" if group else "") for group in match.groups())
    if len(first) > MAX_DIGITS:
        return "unsatisfiable"
    if len(last) > MAX_DIGITS:  # an end past any file's end: up to the end (a suffix that long: all of it)
        last = str(size if first == "" else size - 1)
    if first == "":
        length = int(last)
        if length == 0:
            return "unsatisfiable"
        return max(size - length, 0), size - 1
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if start >= size or end < start:
        return "unsatisfiable"
    return start, end


class AnnotationServer(ThreadingHTTPServer):
    """Holds the session and the label store for the request handlers."""

    daemon_threads = True

    def __init__(
        self, session: Session, out_dir: str | os.PathLike, port: int = 0, frames: int = 8, verbose: bool = False,
        request_timeout: float = 30.0,
    ):
        self.session = session
        self.store = LabelStore(out_dir, session)
        self.frames = frames
        self.verbose = verbose
        self.request_timeout = request_timeout
        super().__init__((HOST, port), AnnotationHandler)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}/"


class AnnotationHandler(BaseHTTPRequestHandler):
    server: AnnotationServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        self.timeout = self.server.request_timeout  # every socket read and write of this connection
        super().setup()

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        if self.server.verbose:
            super().log_message(format, *args)

    def _read_body(self) -> bytes | None:
        """The request body, or None after answering 411/413/408 (too large, no length, not complete in time)."""
        try:
            length = int(self.headers.get("Content-Length") or "x")
        except ValueError:
            self._error(HTTPStatus.LENGTH_REQUIRED, "send the label with a Content-Length")
            return None
        if not 0 <= length <= MAX_BODY:
            self.close_connection = True
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"a label body is at most {MAX_BODY} bytes, not {length}")
            return None
        deadline = time.monotonic() + self.server.request_timeout
        body = b""
        try:
            while len(body) < length:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                self.connection.settimeout(remaining)
                chunk = self.rfile.read1(length - len(body))
                if not chunk:
                    raise TimeoutError  # the client closed before sending the whole body
                body += chunk
        except TimeoutError:
            self.close_connection = True
            self._error(HTTPStatus.REQUEST_TIMEOUT, f"the body did not arrive within {self.server.request_timeout:g} s")
            return None
        finally:
            self.connection.settimeout(self.server.request_timeout)
        return body

    # ---- responses -------------------------------------------------------------------------------------
    def _send_bytes(self, status: int, body: bytes, content_type: str, head_only: bool = False, extra=None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def _send_json(self, status: int, data, head_only: bool = False) -> None:
        self._send_bytes(status, json.dumps(data, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8", head_only)

    def _error(self, status: int, message: str, head_only: bool = False) -> None:
        self._send_json(status, {"error": message}, head_only)

    def _host_ok(self) -> bool:
        # Refuse other Host names so a web page elsewhere cannot reach this server by DNS rebinding.
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        return host in (HOST, "localhost")

    # ---- routing ---------------------------------------------------------------------------------------
    def do_HEAD(self):
        self._get(head_only=True)

    def do_GET(self):
        self._get(head_only=False)

    def _get(self, head_only: bool) -> None:
        if not self._host_ok():
            return self._error(HTTPStatus.FORBIDDEN, "unexpected Host header", head_only)
        url = urlsplit(self.path)
        parts = [part for part in url.path.split("/") if part]
        try:
            if not parts:
                return self._static("index.html", head_only)
            if parts[0] == "static" and len(parts) == 2:
                return self._static(parts[1], head_only)
            if parts == ["api", "session"]:
                return self._session(parse_qs(url.query), head_only)
            if parts[0] == "video" and len(parts) == 2:
                return self._video(parts[1], head_only)
            if parts[0] == "frames" and len(parts) == 3:
                return self._frame(parts[1], parts[2], head_only)
            return self._error(HTTPStatus.NOT_FOUND, f"no such page: {url.path}", head_only)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the browser dropped (or stopped reading) a media request

    def do_POST(self):
        if not self._host_ok():
            return self._error(HTTPStatus.FORBIDDEN, "unexpected Host header")
        if urlsplit(self.path).path != "/api/label":
            return self._error(HTTPStatus.NOT_FOUND, f"no such endpoint: {self.path}")
        # JSON only: a cross-site form cannot send it without a CORS preflight, which this server never grants.
        if not (self.headers.get("Content-Type") or "").startswith("application/json"):
            return self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send the label as application/json")
        raw = self._read_body()
        if raw is None:
            return
        try:
            body = json.loads(raw or b"null", parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as error:
            reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
            return self._error(HTTPStatus.BAD_REQUEST, f"the request body is not usable JSON ({reason})")
        if not isinstance(body, dict):
            return self._error(HTTPStatus.BAD_REQUEST, "the request body must be a JSON object")
        elapsed = body.get("elapsed_s")
        if elapsed is not None and (isinstance(elapsed, bool) or not isinstance(elapsed, (int, float))
                                    or not math.isfinite(elapsed)):
            return self._error(HTTPStatus.BAD_REQUEST, f"elapsed_s must be a finite number of seconds, got {elapsed!r}")
        try:
            annotator = check_annotator(body.get("annotator"))
            record = self.server.store.add(annotator, body.get("pair"), body.get("label"), elapsed)
        except LabelError as error:
            return self._error(HTTPStatus.BAD_REQUEST, str(error))
        except OSError as error:
            return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"could not save the label: {error}")
        # The answer stays blind: it echoes the label, not the model it maps to.
        self._send_json(HTTPStatus.OK, {"ok": True, "pair": record["pair"], "label": record["label"]})

    # ---- handlers --------------------------------------------------------------------------------------
    def _static(self, name: str, head_only: bool) -> None:
        if name not in STATIC_FILES:
            return self._error(HTTPStatus.NOT_FOUND, f"no such file: {name}", head_only)
        body = (STATIC_DIR / name).read_bytes()
        self._send_bytes(HTTPStatus.OK, body, STATIC_FILES[name] + "; charset=utf-8", head_only)

    def _session(self, query: dict, head_only: bool) -> None:
        try:
            annotator = check_annotator((query.get("annotator") or [""])[0])
            labels = self.server.store.labels(annotator)
        except LabelError as error:
            return self._error(HTTPStatus.BAD_REQUEST, str(error), head_only)
        try:
            assigned = self.server.session.pairs_for(annotator)
        except SessionError as error:
            return self._error(HTTPStatus.FORBIDDEN, str(error), head_only)
        pairs = [
            {"index": pair.index, "id": pair.id, "text_a": pair.text_a, "text_b": pair.text_b,
             "video_url": f"/video/{pair.index}",
             "frame_urls": [f"/frames/{pair.index}/{k}.jpg" for k in range(self.server.frames)]}
            for pair in assigned
        ]
        self._send_json(HTTPStatus.OK, {
            "annotator": annotator,
            "pairs": pairs,
            "labels": {str(index): record["label"] for index, record in labels.items()},
        }, head_only)

    def _pair(self, text: str):
        if not text.isdigit() or len(text) > MAX_DIGITS or int(text) >= len(self.server.session.pairs):
            return None
        return self.server.session.pairs[int(text)]

    def _served(self, pair) -> bool:
        """Whether the pair's video lies inside the session's video folder (session.json may have been edited)."""
        return is_inside(pair.video, self.server.session.video_dir)

    def _video(self, index: str, head_only: bool) -> None:
        pair = self._pair(index)
        if pair is None:
            return self._error(HTTPStatus.NOT_FOUND, f"no pair {index}", head_only)
        if not self._served(pair):
            return self._error(HTTPStatus.FORBIDDEN, f"pair {index}: the video is outside the video folder", head_only)
        path = Path(pair.video)
        try:
            handle = path.open("rb")
        except OSError as error:
            return self._error(HTTPStatus.NOT_FOUND, f"{path}: {error.strerror}", head_only)
        with handle:
            size = os.fstat(handle.fileno()).st_size
            content_type = VIDEO_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            byte_range = parse_range(self.headers.get("Range"), size)
            if byte_range == "unsatisfiable":
                return self._send_bytes(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, b"", "text/plain", head_only,
                                        {"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"})
            start, end = byte_range if byte_range else (0, size - 1)
            self.send_response(HTTPStatus.PARTIAL_CONTENT if byte_range else HTTPStatus.OK)
            self.send_header("Content-Type", content_type)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(end - start + 1))
            if byte_range:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if head_only:
                return
            handle.seek(start)
            remaining = end - start + 1
            while remaining > 0:
                chunk = handle.read(min(CHUNK, remaining))
                if not chunk:
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)

    def _frame(self, index: str, name: str, head_only: bool) -> None:
        pair = self._pair(index)
        match = re.fullmatch(r"(\d+)\.jpg", name)
        if pair is None or match is None or len(match.group(1)) > MAX_DIGITS or int(match.group(1)) >= self.server.frames:
            return self._error(HTTPStatus.NOT_FOUND, f"no frame {index}/{name}", head_only)
        if not self._served(pair):
            return self._error(HTTPStatus.FORBIDDEN, f"pair {index}: the video is outside the video folder", head_only)
        try:
            thumbnails = video_thumbnails(pair.video, self.server.frames)
        except Exception as error:  # noqa: BLE001 - any decoder failure becomes a readable 500 for the page
            return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{pair.video}: cannot decode frames ({error})", head_only)
        self._send_bytes(HTTPStatus.OK, thumbnails[int(match.group(1))], "image/jpeg", head_only)


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def serve(session: Session, out_dir: str | os.PathLike, port: int = 8765, frames: int = 8, verbose: bool = False) -> None:
    """Serve until interrupted; prints the URL (with a trailing newline, flushed) once listening."""
    try:
        server = AnnotationServer(session, out_dir, port=port, frames=frames, verbose=verbose)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise OSError(error.errno, f"port {port} on {HOST} is in use; pass another --port (0 picks a free one)") from None
        raise
    print(f"Serving {len(session.pairs)} pairs on {server.url}  (labels in {Path(out_dir) / 'labels'})", flush=True)
    print(f"Open {server.url}?annotator=YOUR_NAME", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()
