"""A small OpenAI-compatible chat server on 127.0.0.1 that misbehaves on demand, for AutoDQ judge tests.

When it behaves it is a deterministic rule-based AutoDQ judge: extraction prompts get the description's
sentences as events, entailment prompts get "entailment" when most of an event's words occur in the description
and "neutral" otherwise. Faults are taken from a script, one per request, in order:

    "429"            429 Too Many Requests (with Retry-After: 0)
    "500"            500 Internal Server Error
    "400"            400 Bad Request (not worth retrying)
    "garbage"        200 with a body that is not JSON
    "garbage_answer" a well-formed completion whose text is prose, not the requested structure
    "slow"           the normal answer after `slow_seconds` (longer than the client's timeout)
    "drop"           the connection is closed without any answer
    "drip"           200 and all headers at once, then the body one byte every `drip_seconds`
    "drip_headers"   the status line and headers one byte every `drip_seconds` (the body never comes)
    "ok"             the normal answer

`always` applies one fault to every request after the script is used up; `models_status` is the status of
`GET /v1/models` (200 lists "rule-judge"; 500 is what `transformers serve` answers without a Hub cache folder). `kill_at=(pid, n)` sends SIGKILL to
`pid` when the n-th request (1-based) arrives, before answering it. `log` records every request:
(request number, fault, sha256 of the request body).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_WORD = re.compile(r"[a-z0-9]+")


def _between(text: str, start: str, end: str) -> str:
    i = text.index(start) + len(start)
    return text[i : text.index(end, i)]


def rule_based_answer(prompt: str) -> str:
    """The deterministic judge's answer to an AutoDQ extraction or entailment prompt."""
    if "Extract at most 10 key events" in prompt:
        description = _between(prompt, "Below is a description of a video clip:\n\n", "\n\nExtract at most")
        sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", description) if s.strip()]
        return json.dumps({"events": sentences[:10]})
    if "classify the relationship" in prompt:
        description = _between(prompt, "Video description:\n\n", "\n\nEvents:\n\n")
        events = json.loads(_between(prompt, "\n\nEvents:\n\n", "\n\nDO NOT PROVIDE"))
        words = set(_WORD.findall(description.lower()))
        out = []
        for event in events:
            content = [w for w in _WORD.findall(event.lower()) if len(w) > 3]
            hit = sum(w in words for w in content)
            label = "entailment" if content and hit / len(content) >= 0.6 else "neutral"
            out.append({"event": event, "relationship": label, "reason": f"{hit}/{len(content)} words"})
        return json.dumps(out)
    return "I only judge AutoDQ prompts."


class FaultServer:
    """Start with `with FaultServer(script=[...]) as server:`; `server.base_url` is the `/v1` URL."""

    def __init__(
        self, script=(), always: str = "ok", slow_seconds: float = 2.0, kill_at: tuple[int, int] | None = None,
        drip_seconds: float = 2.0, models_status: int = 200,
    ):
        self.script = list(script)
        self.models_status = models_status
        self.always = always
        self.slow_seconds = slow_seconds
        self.drip_seconds = drip_seconds
        self._stop = threading.Event()
        self.kill_at = kill_at
        self.log: list[tuple[int, str, str]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def _send(self, status: int, body: bytes, headers: dict | None = None):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _drip(self, fault: str):
                """Trickle a never-ending answer until the client goes away or the server stops."""
                text = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
                if fault == "drip":
                    self.wfile.write(text)
                    self.wfile.flush()
                    text = b" " * 100000
                try:
                    for byte in text:
                        if server._stop.wait(server.drip_seconds):
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self):
                if server.models_status != 200:
                    return self._send(server.models_status, b'{"error": {"message": "no cache folder"}}')
                self._send(200, json.dumps({"object": "list", "data": [{"id": "rule-judge", "object": "model"}]}).encode())

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body_key = hashlib.sha256(raw).hexdigest()
                with server._lock:
                    n = len(server.log) + 1
                    fault = server.script.pop(0) if server.script else server.always
                    kill = server.kill_at is not None and server.kill_at[1] == n
                    server.log.append((n, "killed" if kill else fault, body_key))
                if kill:
                    os.kill(server.kill_at[0], signal.SIGKILL)
                    return
                if fault == "drop":
                    self.close_connection = True
                    return
                if fault == "429":
                    return self._send(429, b'{"error": {"message": "rate limited"}}', {"Retry-After": "0"})
                if fault == "500":
                    return self._send(500, b'{"error": {"message": "boom"}}')
                if fault == "400":
                    return self._send(400, b'{"error": {"message": "unknown model"}}')
                if fault == "garbage":
                    return self._send(200, b"<html>definitely not json")
                if fault == "slow":
                    time.sleep(server.slow_seconds)
                if fault in ("drip", "drip_headers"):
                    return self._drip(fault)
                request = json.loads(raw)
                prompt = request["messages"][-1]["content"]
                text = "Sure! Here is what I think about it." if fault == "garbage_answer" else rule_based_answer(prompt)
                completion = {
                    "id": f"chatcmpl-{n}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": request.get("model", "rule-judge"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
                try:
                    self._send(200, json.dumps(completion).encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def answered_ok(self) -> list[str]:
        """Body hashes of requests that got a normal answer."""
        with self._lock:
            return [key for _, fault, key in self.log if fault == "ok"]

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
