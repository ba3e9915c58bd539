"""`OpenAIChatJudge`: a judge behind any OpenAI-compatible `/v1/chat/completions` endpoint (OpenAI, Azure, vLLM,
`transformers serve`, llama.cpp server, Ollama), through the `openai` client.

HTTP failures (408, 409, 429, 5xx, timeouts, dropped connections) are retried by the `openai` client itself
(`max_retries`, exponential backoff with jitter, `Retry-After` honoured); every HTTP attempt has a total deadline of
`timeout` seconds, headers and body together (`_DeadlineTransport`), so a server that trickles bytes cannot hold a
call (the client's own timeouts apply per read). `check` asks the endpoint for its model list within a short
deadline; an api.openai.com endpoint without a key fails when the judge is built.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from .judge import ChatJudge, JudgeUnavailableError, UnusableAnswerError
from .judge_cache import JudgeCache, JudgeSettings

# Hosts of judges on this machine (no key needed, one request at a time, long timeouts: see pipeline.judge_defaults).
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}


def needs_openai_key(base_url: str | None) -> bool:
    """True for OpenAI's own API (`base_url` None or a host under openai.com), which refuses every request
    without a key."""
    host = (urlparse(base_url).hostname or "") if base_url else "api.openai.com"
    return host == "openai.com" or host.endswith(".openai.com")


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
        is a folder on this machine served by a local endpoint. When `/models` fails with a server error, one
        1-token chat request (within `seconds` more) decides: `transformers serve` answers 500 there on a machine
        without a Hub cache folder, yet judges.
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
            if error.status_code < 500 or not self._answers_chat(seconds):
                raise JudgeUnavailableError(f"judge endpoint {where} failed (HTTP {error.status_code}): {advice}") from None
            return (f"judge endpoint {where} answers {self.settings.model!r} (its model list failed with HTTP "
                    f"{error.status_code})")
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

    def _answers_chat(self, seconds: float) -> bool:
        """Whether the endpoint answers a 1-token chat request to this judge's model within `seconds`."""
        import openai

        client_class, options = self._client_options

        async def one_token() -> None:
            async with client_class(**options, timeout=seconds, max_retries=0) as client:
                await asyncio.wait_for(client.chat.completions.create(
                    model=self.settings.model, messages=[{"role": "user", "content": "Say OK."}], max_tokens=1),
                    seconds)

        try:
            asyncio.run_coroutine_threadsafe(one_token(), self._loop).result()
        except (asyncio.TimeoutError, openai.APIError):
            return False
        return True

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
