"""What a judge is (`JudgeSettings`) and its persistent answers (`JudgeCache`), keyed by `request_key`.

Every answer is stored under a key made of everything that can change the answer (endpoint kind and base URL, model,
temperature, seed, max tokens) and the messages, one committed SQLite transaction per answer: a run killed at any
point resumes without repeating a completed call, and a re-run makes none.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class JudgeSettings:
    """What the judge is; every field is part of the cache key (a different endpoint may answer differently).

    `temperature`, `seed` and `max_tokens` set to None are not sent at all (the endpoint's defaults apply),
    which is what the released DREAM-1K evaluator does.
    """

    model: str
    endpoint_kind: str
    temperature: float | None = 0.0
    seed: int | None = 1234
    max_tokens: int | None = None
    base_url: str | None = None

    def key_fields(self) -> dict:
        return {
            "model": self.model,
            "endpoint_kind": self.endpoint_kind,
            "temperature": self.temperature,
            "seed": self.seed,
            "max_tokens": self.max_tokens,
            "base_url": self.base_url.rstrip("/") if self.base_url else None,
        }

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def request_key(settings: JudgeSettings, messages: list[dict], tag: str | None = None) -> str:
    """sha256 over the answer-changing settings, the messages and an optional tag (e.g. a retry number)."""
    payload = json.dumps(
        {"settings": settings.key_fields(), "messages": messages, "tag": tag}, sort_keys=True, ensure_ascii=False
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class JudgeCache:
    """Judge answers persisted in SQLite; each `put` is its own committed transaction.

    A process killed mid-write leaves either the whole row or nothing (SQLite's journal), so the file is always
    consistent. Safe to share between threads of one process and between processes.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(self.path), timeout=60, check_same_thread=False, isolation_level=None)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, settings TEXT NOT NULL, "
                "messages TEXT NOT NULL, tag TEXT, answer TEXT NOT NULL, created REAL NOT NULL)"
            )
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{self.path}: not a usable judge cache (SQLite said: {exc})") from exc

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, settings: JudgeSettings, messages: list[dict], tag: str | None, answer: str) -> None:
        row = (key, json.dumps(settings.key_fields()), json.dumps(messages, ensure_ascii=False), tag, answer, time.time())
        with self._lock:
            self._conn.execute("INSERT OR IGNORE INTO answers VALUES (?, ?, ?, ?, ?, ?)", row)

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
