"""LLM judges: send a chat, get text back, with a persistent cache and bounded retries.

Two clients share one contract, `ChatJudge.chat(messages) -> str`:

- `OpenAIChatJudge`: any OpenAI-compatible chat endpoint through the `openai` client (OpenAI, Azure, vLLM,
  `transformers serve`, llama.cpp server, Ollama).
- `TransformersChatJudge`: a chat model run in this process with transformers.

Every answer is stored in a `JudgeCache` (SQLite, one committed transaction per answer) under a key made of
everything that can change the answer (endpoint kind and base URL, model, temperature, seed, max tokens) and the
messages. A run killed at any point therefore resumes without repeating a completed call, and a re-run makes none.

Failures are bounded in count and in time. HTTP failures (408, 409, 429, 5xx, timeouts, dropped connections) are
retried by the `openai` client itself (`max_retries`, exponential backoff with jitter, `Retry-After` honoured);
every HTTP attempt has a total deadline of `timeout` seconds, headers and body together, so a server that
trickles bytes cannot hold a call (the client's own timeouts apply per read). Answers that cannot be used (a body
that is not JSON, an empty text) are asked again, up to `max_attempts` calls. A call that keeps failing raises
`JudgeCallError` carrying every attempt's error, so callers can record it.

Before a long run, `ChatJudge.check(seconds)` says within a short deadline whether the judge can answer at all
(endpoint reachable, key accepted, model listed by `/v1/models` where the endpoint lists models) and raises
`JudgeUnavailableError` with the cause and the fix otherwise; an api.openai.com endpoint without a key fails when the
judge is built. `ChatJudge.on_answer`, when set, is called after every call (answered, cached or failed), which is
how progress bars follow a judge that takes minutes per sample.

Example (the Video-ChatGPT QA judge protocol or any other use)::

    judge = OpenAIChatJudge("gpt-3.5-turbo-0125", cache=JudgeCache("judge_cache.sqlite"))
    text = judge.chat([{"role": "user", "content": "..."}])
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import hashlib
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar
from urllib.parse import urlparse

T = TypeVar("T")


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


class JudgeCallError(RuntimeError):
    """A judge call failed on every attempt (or with an error retrying cannot fix); `errors` lists each attempt."""

    def __init__(self, errors: list[str], settings: JudgeSettings):
        self.errors = list(errors)
        self.settings = settings
        super().__init__(
            f"judge {settings.model!r} ({settings.endpoint_kind}) failed after {len(errors)} attempt(s); "
            f"last error: {errors[-1] if errors else 'none'}"
        )


# Hosts of judges on this machine (no key needed, one request at a time, long timeouts: see pipeline.judge_defaults).
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}


def needs_openai_key(base_url: str | None) -> bool:
    """True for OpenAI's own API (`base_url` None or a host under openai.com), which refuses every request
    without a key."""
    host = (urlparse(base_url).hostname or "") if base_url else "api.openai.com"
    return host == "openai.com" or host.endswith(".openai.com")


class JudgeUnavailableError(RuntimeError):
    """The judge cannot answer (not reachable, key refused or missing, model unknown): raised by `ChatJudge.check`
    and by `OpenAIChatJudge` when no key is given for an endpoint that needs one."""


@dataclass
class CallStats:
    requests: int = 0  # requests actually sent (each retry counts)
    completed: int = 0  # answers received and stored
    cache_hits: int = 0
    failed_calls: int = 0  # calls that raised JudgeCallError

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class ChatJudge:
    """Base class: caching, bounded re-asks and statistics around one `_complete(messages, settings) -> str`.

    `_complete` raises `UnusableAnswerError` for an answer that another request may fix (asked again, up to
    `max_attempts` calls); any other exception ends the call (subclasses retry their transport themselves).
    """

    # True when `_complete` counts the requests it sends itself (an HTTP client that retries internally).
    _counts_own_requests = False

    def __init__(self, settings: JudgeSettings, cache: JudgeCache | str | os.PathLike | None, max_attempts: int = 6):
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.settings = settings
        self.cache = JudgeCache(cache) if isinstance(cache, (str, os.PathLike)) else cache
        self.max_attempts = max_attempts
        self.stats = CallStats()
        self._stats_lock = threading.Lock()
        self.on_answer: Callable[[], None] | None = None  # called after every call (see the module docstring)

    def _complete(self, messages: list[dict], settings: JudgeSettings) -> str:
        raise NotImplementedError

    def check(self, seconds: float = 10.0) -> str:
        """Raise `JudgeUnavailableError` when the judge cannot answer; a line saying what was checked otherwise.
        An in-process judge is ready once built."""
        return f"judge {self.settings.model!r} ({self.settings.endpoint_kind}) runs in this process"

    def _count(self, name: str) -> None:
        with self._stats_lock:
            setattr(self.stats, name, getattr(self.stats, name) + 1)
        if name in ("completed", "cache_hits", "failed_calls") and self.on_answer is not None:
            self.on_answer()

    def chat(self, messages: list[dict], *, tag: str | None = None, **overrides) -> str:
        """The judge's answer to `messages` (list of `{"role", "content"}` dicts), from the cache when known.

        `overrides` replace settings for this call only (e.g. `seed=7`, `temperature=0.7`) and are part of the
        cache key; `tag` separates otherwise identical requests (e.g. repeat or retry numbers).
        Raises `JudgeCallError` when every attempt failed.
        """
        settings = dataclasses.replace(self.settings, **overrides) if overrides else self.settings
        key = request_key(settings, messages, tag)
        if self.cache is not None:
            cached = self.cache.get(key)
            if cached is not None:
                self._count("cache_hits")
                return cached
        errors: list[str] = []
        for _ in range(self.max_attempts):
            if not self._counts_own_requests:
                self._count("requests")
            try:
                answer = self._complete(messages, settings)
                if not isinstance(answer, str) or not answer.strip():
                    raise UnusableAnswerError(f"empty answer: {answer!r}")
            except UnusableAnswerError as exc:
                errors += exc.attempts + [f"{type(exc).__name__}: {exc}"[:500]]
                continue
            except Exception as exc:  # noqa: BLE001 - recorded in the JudgeCallError, never swallowed
                # one entry per HTTP attempt when the transport saw them, else the exception itself
                errors += getattr(exc, "judge_attempts", None) or [f"{type(exc).__name__}: {exc}"[:500]]
                break
            if self.cache is not None:
                self.cache.put(key, settings, messages, tag, answer)
            self._count("completed")
            return answer
        self._count("failed_calls")
        raise JudgeCallError(errors, settings)

    def chat_parsed(
        self,
        messages: list[dict],
        parse: Callable[[str], T],
        max_attempts: int = 3,
        retry_temperature: float | None = None,
        tag: str | None = None,
        **overrides,
    ) -> tuple[T, list[str]]:
        """Ask until `parse(answer)` succeeds: returns `(parsed, answers)`; raises the last `ValueError`.

        Attempt k > 0 is a distinct request (seed + k, tag `...a{k}`, temperature raised to
        `retry_temperature` when given) so that a deterministic judge can answer differently; every answer is
        cached, so a re-run re-parses the same answers.
        """
        answers: list[str] = []
        last_error: ValueError | None = None
        for k in range(max_attempts):
            call_overrides = dict(overrides)
            call_tag = tag
            if k > 0:
                seed = call_overrides.get("seed", self.settings.seed)
                if seed is not None:
                    call_overrides["seed"] = seed + k
                temperature = call_overrides.get("temperature", self.settings.temperature)
                if retry_temperature is not None and (temperature is None or temperature < retry_temperature):
                    call_overrides["temperature"] = retry_temperature
                call_tag = f"{tag or ''}a{k}"
            answer = self.chat(messages, tag=call_tag, **call_overrides)
            answers.append(answer)
            try:
                return parse(answer), answers
            except ValueError as exc:
                last_error = exc
        assert last_error is not None
        raise last_error


class UnusableAnswerError(RuntimeError):
    """The endpoint answered, but with nothing usable (no text, no choices, a body that is not JSON).

    `attempts` lists the failed HTTP attempts behind this answer, if any."""

    def __init__(self, message: str, attempts: list[str] | None = None):
        super().__init__(message)
        self.attempts = list(attempts or [])


try:  # the HTTP library the installed `openai` client is built on
    import httpx2 as _httpx
except ImportError:  # pragma: no cover - openai < 3 uses httpx
    import httpx as _httpx

# Errors of the HTTP attempts of the judge call running in the current task (set per call, filled by the transport).
_ATTEMPT_ERRORS: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("judge_attempt_errors", default=None)


class _DeadlineTransport(_httpx.AsyncBaseTransport):
    """An HTTP transport that gives every request a total deadline, headers and body together.

    The client's timeouts apply per network read, so a server that sends one byte every few seconds would hold a
    request forever; here the whole exchange is cancelled after `seconds` and reported as a `ReadTimeout`, which
    the `openai` client retries like any timeout. Every attempt is counted with `on_request` and its failure (if
    any) appended to the current call's `_ATTEMPT_ERRORS`.
    """

    def __init__(self, seconds: float, on_request: Callable[[], None]):
        self.seconds = seconds
        self.on_request = on_request
        self._inner = _httpx.AsyncHTTPTransport()

    @staticmethod
    def _record(error: str) -> None:
        errors = _ATTEMPT_ERRORS.get()
        if errors is not None:
            errors.append(error[:500])

    async def _exchange(self, request):
        response = await self._inner.handle_async_request(request)
        try:
            body = b"".join([chunk async for chunk in response.stream])
        finally:
            await response.aclose()
        return response, body

    async def handle_async_request(self, request):
        self.on_request()
        try:
            response, body = await asyncio.wait_for(self._exchange(request), self.seconds)
        except asyncio.TimeoutError:
            message = f"timed out: no complete answer within {self.seconds:g} s (total deadline of one request)"
            self._record(f"ReadTimeout: {message}")
            raise _httpx.ReadTimeout(message, request=request) from None
        except _httpx.TransportError as exc:
            self._record(f"{type(exc).__name__}: {exc}")
            raise
        if response.status_code >= 400:
            reason = response.extensions.get("reason_phrase", b"").decode("ascii", "replace")
            self._record(f"HTTP {response.status_code} {reason}: {body[:200].decode('utf-8', 'replace')}")
        return _httpx.Response(
            response.status_code, headers=response.headers, content=body,
            extensions={k: v for k, v in response.extensions.items() if k in ("http_version", "reason_phrase")},
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


class OpenAIChatJudge(ChatJudge):
    """A judge behind any OpenAI-compatible `/v1/chat/completions` endpoint.

    Args:
        model: model name the endpoint expects (for `transformers serve`, the served folder or Hub id).
        base_url: e.g. `http://127.0.0.1:8000/v1`; None means api.openai.com.
        api_key: defaults to `$OPENAI_API_KEY` (`$AZURE_OPENAI_API_KEY` for Azure); without either, api.openai.com
            (`base_url` None or on openai.com) raises `JudgeUnavailableError` at once, and any other endpoint gets
            "EMPTY" (a local server needs no key; `check` tells whether a remote one does).
        endpoint_kind: recorded label and client choice: "openai", "azure" (uses `AsyncAzureOpenAI`, `base_url` is
            the Azure endpoint), "vllm", "transformers-serve", "llama.cpp", "ollama", ...
        temperature, seed, max_tokens: sent when not None.
        timeout: total seconds of one HTTP request (headers and body); a request that runs over is retried.
        cache: a `JudgeCache`, a path for one, or None.
        max_attempts: HTTP attempts per call (the `openai` client's `max_retries = max_attempts - 1`, with its
            backoff and `Retry-After` handling), and calls per answer when answers are unusable. One call
            therefore ends within about `max_attempts * (timeout + 8 s)` (8 s: the client's largest backoff)
            unless the server asks for longer waits with `Retry-After` (the client honours up to 2 minutes).

    Requests run on an event loop in a background thread (the deadline cancels them cleanly); `chat` blocks and is
    safe to call from several threads at once.
    """

    _counts_own_requests = True

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        endpoint_kind: str = "openai",
        temperature: float | None = 0.0,
        seed: int | None = 1234,
        max_tokens: int | None = None,
        timeout: float = 60.0,
        cache: JudgeCache | str | os.PathLike | None = None,
        max_attempts: int = 6,
        api_version: str | None = None,
    ):
        import openai

        settings = JudgeSettings(model, endpoint_kind, temperature, seed, max_tokens, base_url)
        super().__init__(settings, cache, max_attempts)
        if endpoint_kind == "azure":
            key = api_key or os.environ.get("AZURE_OPENAI_API_KEY")
            if not key or not base_url:
                raise ValueError("endpoint_kind='azure' needs base_url (the Azure endpoint) and api_key or $AZURE_OPENAI_API_KEY")
            client_class = openai.AsyncAzureOpenAI
            options = {"azure_endpoint": base_url, "api_key": key,
                       "api_version": api_version or os.environ.get("OPENAI_API_VERSION", "2024-06-01")}
        else:
            key = api_key or os.environ.get("OPENAI_API_KEY")
            if not key and needs_openai_key(base_url):
                raise JudgeUnavailableError(
                    f"judge {model!r} on {base_url or 'api.openai.com'} needs an API key: set $OPENAI_API_KEY or pass "
                    "one (eval runners: --judge_api_key), or point --judge_base_url at a local OpenAI-compatible "
                    "server (vLLM, `transformers serve`), or generate now with --skip_scoring and score later")
            client_class = openai.AsyncOpenAI
            options = {"base_url": base_url, "api_key": key or "EMPTY"}
        self._client_options = (client_class, options)
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="judge-http", daemon=True).start()
        transport = _DeadlineTransport(timeout, lambda: self._count("requests"))
        self.client = client_class(
            **options, timeout=openai.Timeout(timeout), max_retries=max_attempts - 1,
            http_client=openai.DefaultAsyncHttpxClient(transport=transport, timeout=openai.Timeout(timeout)),
        )

    def check(self, seconds: float = 10.0) -> str:
        """Ask the endpoint for its model list, once, within `seconds` in all.

        Raises `JudgeUnavailableError` when it cannot be reached, refuses the key, fails, or lists models without
        this one. An endpoint without `/models` passes (the first request then tells), and so does a model that is
        not listed by `transformers serve` (which lists its Hub cache but loads any model a request names) or that
        is a folder on this machine served by a local endpoint.
        """
        import openai

        where = self.settings.base_url or "api.openai.com"
        advice = "start it, fix --judge_base_url, or generate now with --skip_scoring and score later"
        client_class, options = self._client_options

        async def list_models() -> list[str]:
            async with client_class(**options, timeout=seconds, max_retries=0) as client:
                page = await asyncio.wait_for(client.models.list(), seconds)
                return [model.id for model in page.data]

        try:
            listed = asyncio.run_coroutine_threadsafe(list_models(), self._loop).result()
        except (asyncio.TimeoutError, openai.APITimeoutError):
            raise JudgeUnavailableError(f"judge endpoint {where} did not answer within {seconds:g} s: {advice}") from None
        except openai.APIConnectionError as error:
            raise JudgeUnavailableError(f"judge endpoint {where} is not reachable ({error.__cause__ or error}): "
                                        f"{advice}") from None
        except (openai.AuthenticationError, openai.PermissionDeniedError) as error:
            raise JudgeUnavailableError(
                f"judge endpoint {where} refused the API key (HTTP {error.status_code}): set $OPENAI_API_KEY or "
                "--judge_api_key") from None
        except (openai.NotFoundError, openai.UnprocessableEntityError):
            return f"judge endpoint {where} answers (it lists no models; the first request checks {self.settings.model!r})"
        except openai.APIStatusError as error:
            raise JudgeUnavailableError(f"judge endpoint {where} failed (HTTP {error.status_code}): {advice}") from None
        model = self.settings.model
        if model in listed:
            return f"judge endpoint {where} serves {model!r}"
        on_demand = self.settings.endpoint_kind == "transformers-serve" or (
            urlparse(where).hostname in LOCAL_HOSTS and Path(model).is_dir())
        if on_demand:
            return f"judge endpoint {where} answers; it loads {model!r} on demand"
        shown = ", ".join(repr(name) for name in listed[:10]) + (", ..." if len(listed) > 10 else "")
        raise JudgeUnavailableError(
            f"judge endpoint {where} does not list model {model!r} (it lists {shown or 'none'}): fix --judge_model, "
            "or pass --judge_endpoint_kind transformers-serve for a server that loads models on demand")

    def _complete(self, messages: list[dict], settings: JudgeSettings) -> str:
        return asyncio.run_coroutine_threadsafe(self._acomplete(messages, settings), self._loop).result()

    async def _acomplete(self, messages: list[dict], settings: JudgeSettings) -> str:
        attempts: list[str] = []
        _ATTEMPT_ERRORS.set(attempts)  # this task's own context: concurrent calls do not mix
        kwargs = {}
        if settings.temperature is not None:
            kwargs["temperature"] = settings.temperature
        if settings.seed is not None:
            kwargs["seed"] = settings.seed
        if settings.max_tokens is not None:
            kwargs["max_tokens"] = settings.max_tokens
        try:
            response = await self.client.chat.completions.create(model=settings.model, messages=messages, **kwargs)
        except ValueError as exc:  # a 200 whose body is not JSON
            raise UnusableAnswerError(f"the response body is not JSON ({exc})", attempts) from None
        except Exception as exc:
            exc.judge_attempts = attempts
            raise
        if not getattr(response, "choices", None):
            raise UnusableAnswerError(f"response without choices: {str(response)[:200]}", attempts)
        return response.choices[0].message.content

    def close(self) -> None:
        """Close the HTTP client and stop the background event loop."""
        asyncio.run_coroutine_threadsafe(self.client.close(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)


class TransformersChatJudge(ChatJudge):
    """A chat model run in this process: `apply_chat_template` + `generate`.

    Args:
        model: a folder or Hub id, or an already loaded `PreTrainedModel` (then pass `tokenizer`).
        temperature: 0 or None = greedy; > 0 samples with a generator seeded from `seed`.
        max_tokens: new tokens per answer (required: generation must be bounded).
        device: torch device for a model loaded here.
    Calls are serialised with a lock (one model, one generate at a time).
    """

    def __init__(
        self,
        model,
        tokenizer=None,
        temperature: float | None = 0.0,
        seed: int | None = 1234,
        max_tokens: int = 512,
        device: str = "cpu",
        dtype=None,
        cache: JudgeCache | str | os.PathLike | None = None,
        max_attempts: int = 1,
        model_name: str | None = None,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if isinstance(model, (str, os.PathLike)):
            name = str(model)
            self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(name)
            self.model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype or "auto").to(device)
        else:
            if tokenizer is None:
                raise ValueError("TransformersChatJudge: pass `tokenizer` together with a loaded model")
            name = model.config._name_or_path
            self.model, self.tokenizer = model, tokenizer
        self.model.eval()
        if self.tokenizer.chat_template is None:
            raise ValueError(f"{name}: the tokenizer has no chat template; a chat judge needs one")
        settings = JudgeSettings(model_name or name, "transformers", temperature, seed, max_tokens, None)
        super().__init__(settings, cache, max_attempts)
        self._generate_lock = threading.Lock()

    def _complete(self, messages: list[dict], settings: JudgeSettings) -> str:
        import torch

        inputs = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self.model.device)
        sample = bool(settings.temperature)
        kwargs = {"max_new_tokens": settings.max_tokens, "do_sample": sample}
        if sample:
            kwargs["temperature"] = settings.temperature
        else:  # greedy: clear sampling knobs a generation_config may carry, to avoid warnings
            kwargs.update(temperature=None, top_p=None, top_k=None)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with self._generate_lock, torch.inference_mode():
            if settings.seed is not None:
                torch.manual_seed(settings.seed)
            output = self.model.generate(**inputs, pad_token_id=pad, **kwargs)
        new_tokens = output[0, inputs["input_ids"].shape[1] :]  # (new_len,)
        return self.tokenizer.decode(new_tokens, skip_special_tokens=True)
