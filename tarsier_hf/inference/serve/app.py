"""The HTTP application of `tarsier-serve` (`create_app`): the OpenAI chat-completions endpoint, whole and streamed
(server-sent events), `/v1/models` and `/health`; refusals in OpenAI's error format, and a request body over the
limit answered with a 413 however it is sent (`_BodyLimit`)."""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from typing import AsyncIterator

from fastapi import Request
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice, ChoiceLogprobs
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta
from openai.types.chat.chat_completion_chunk import ChoiceLogprobs as ChunkLogprobs
from openai.types.completion_usage import CompletionUsage

from tarsier_hf.inference.serve.batching import Prepared
from tarsier_hf.inference.serve.engine import Engine, first_stop
from tarsier_hf.inference.serve.protocol import ChatCompletionRequest, RequestError, error_body, field_name

logger = logging.getLogger(__name__)


class _BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets a 413, however it is sent (a `Content-Length` over
    the limit is refused before reading; a chunked or understated body is counted as it arrives and reading stops
    at the limit)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"the request body exceeds the limit of {self.limit} bytes (--max_request_mb)"
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.limit:
            return await self._refuse(send, message if length.isdigit() else "Content-Length is not a number")
        received, over = 0, False

        async def counted_receive():
            nonlocal received, over
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > self.limit:
                    over = True
                    return {"type": "http.disconnect"}  # the application stops reading; this middleware answers
            return event

        response_started = False

        async def guarded_send(event):
            nonlocal response_started
            if over:  # the application answers a body it could not finish reading: the answer is the 413
                return
            response_started = response_started or event["type"] == "http.response.start"
            await send(event)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:  # noqa: BLE001 - a read cut short surfaces as whatever the framework makes of it
            if not over:
                raise
        if over and not response_started:
            await self._refuse(send, message)

    @staticmethod
    async def _refuse(send, message: str) -> None:
        body = json.dumps(error_body(message)).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def create_app(engine: Engine, max_request_bytes: int = 256 * 2**20):
    """The FastAPI application serving `engine`; bodies over `max_request_bytes` get a 413."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI(title="Tarsier OpenAI-compatible server")
    app.add_middleware(_BodyLimit, limit=max_request_bytes)

    def error_response(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        return JSONResponse(error_body(message, param, kind), status)

    @app.exception_handler(RequestError)
    async def _request_error(_request: Request, error: RequestError):
        return error_response(error.status, error.message, error.param, error.kind)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, error: RequestValidationError):
        errors = error.errors()
        problems = "; ".join(f"{field_name(e['loc'])}: {e['msg']}" for e in errors)
        return error_response(400, problems, field_name(errors[0]["loc"]) if errors else None)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": engine.name, "object": "model", "created": engine.created,
                                            "owned_by": "tarsier-hf"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatCompletionRequest, http_request: Request):
        if request.model != engine.name:
            raise RequestError(f"model {request.model!r} is not served here; this server serves {engine.name!r}",
                               status=404, param="model", kind="not_found_error")
        cancelled = threading.Event()
        # streamed (answer, text, log-probability entries); None once all answers are done
        pieces: queue.Queue[tuple[int, str, list] | None] = queue.Queue()
        with engine.arriving():
            prepared = await asyncio.to_thread(engine.prepare, request)
            sink = (lambda index, text, logprobs: pieces.put((index, text, logprobs))) if request.stream else None
            future = engine.generate(prepared, sink, cancelled)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if request.stream:
            include_usage = request.stream_options is not None and request.stream_options.include_usage
            return _StreamThatCancels(_stream(prepared, future, pieces, request_id, created, include_usage),
                                      cancelled, media_type="text/event-stream")
        try:
            answers = await _result_while_connected(future, http_request)
        except RequestError:
            raise
        except Exception as error:  # noqa: BLE001 - a failed generation is the server's fault: 500 with the reason
            logger.exception("generation failed")
            raise RequestError(f"generation failed: {type(error).__name__}: {error}", 500, kind="server_error")
        finally:
            cancelled.set()  # a no-op once generation has ended; stops it when the client left or the handler ends
        choices, completion_tokens = [], 0
        for index, answer in enumerate(answers):
            text, reason, tokens = engine.finish(prepared, answer.ids)
            completion_tokens += tokens
            logprobs = (ChoiceLogprobs(content=engine.token_logprobs(answer.logprobs))
                        if prepared.top_logprobs is not None else None)
            choices.append(Choice(index=index, finish_reason=reason, logprobs=logprobs,
                                  message=ChatCompletionMessage(role="assistant", content=text)))
        completion = ChatCompletion(
            id=request_id, object="chat.completion", created=created, model=engine.name, choices=choices,
            usage=CompletionUsage(prompt_tokens=prepared.prompt_tokens, completion_tokens=completion_tokens,
                                  total_tokens=prepared.prompt_tokens + completion_tokens),
        )
        return completion.model_dump(exclude_none=True)

    async def _result_while_connected(future: Future, http_request: Request, poll_s: float = 0.2):
        """The generation's result; a client that disconnects first gets a 499 nobody reads (and the handler's
        `cancelled.set()` stops the generation at its next token)."""
        waiting = asyncio.wrap_future(future)
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=poll_s)
            if done:
                return waiting.result()
            if await http_request.is_disconnected():
                raise RequestError("the client closed the request; its generation was stopped", 499)

    class _StreamThatCancels(StreamingResponse):
        """Sets `cancelled` however the response ends: sent in full, the client gone, or the task cancelled.

        Starlette stops iterating the body when a send fails and leaves the generator to be closed by the garbage
        collector, which can be late enough for the abandoned generation to run to its `max_tokens` and hold a
        generation thread (measured with the collector off: 4 of 48 cancels missed before this class, 0 of 48
        after)."""

        def __init__(self, content, cancelled: threading.Event, **kwargs):
            super().__init__(content, **kwargs)
            self.cancelled = cancelled

        async def __call__(self, scope, receive, send):
            try:
                await super().__call__(scope, receive, send)
            finally:
                self.cancelled.set()

    async def _stream(prepared: Prepared, future: Future, pieces: queue.Queue, request_id: str, created: int,
                      include_usage: bool) -> AsyncIterator[str]:
        """Server-sent chunks of every answer (`choices[0].index` tells which) from `pieces` (what the rows of
        `future`'s request put there), each answer's text held back by as many characters as a stop string could
        still need, so no part of one is ever sent. Log-probability entries, when asked, ride on the answer's next
        chunk (text may follow them later); all chunks together carry the non-streamed answer's entries."""

        def chunk(index: int | None, delta: ChoiceDelta | None = None, reason: str | None = None,
                  usage: CompletionUsage | None = None) -> str:
            choices = []
            if index is not None:
                logprobs = None
                if prepared.top_logprobs is not None and pending[index]:
                    logprobs = ChunkLogprobs(content=engine.token_logprobs(pending[index]))
                    pending[index] = []
                choices = [ChunkChoice(index=index, delta=delta, finish_reason=reason, logprobs=logprobs)]
            body = ChatCompletionChunk(id=request_id, object="chat.completion.chunk", created=created,
                                       model=engine.name, choices=choices, usage=usage)
            return f"data: {body.model_dump_json(exclude_none=True)}\n\n"

        future.add_done_callback(lambda _: pieces.put(None))
        hold = max((len(s) for s in prepared.stop), default=1) - 1
        texts, sent, stopped = [""] * prepared.n, [0] * prepared.n, [False] * prepared.n
        pending: list[list] = [[] for _ in range(prepared.n)]  # log-probability entries not sent yet, per answer
        try:
            for index in range(prepared.n):
                yield chunk(index, ChoiceDelta(role="assistant", content=""))
            while (piece := await asyncio.to_thread(pieces.get)) is not None:
                index, text, logprobs = piece
                pending[index] += logprobs
                if stopped[index]:
                    continue
                texts[index] += text
                cut = first_stop(texts[index], prepared.stop)
                end = cut if cut is not None else max(sent[index], len(texts[index]) - hold)
                if end > sent[index]:
                    yield chunk(index, ChoiceDelta(content=texts[index][sent[index]:end]))
                    sent[index] = end
                stopped[index] = cut is not None
            answers = await asyncio.wrap_future(future)
        except Exception as error:  # noqa: BLE001 - headers are sent: report in the stream, as OpenAI does
            logger.exception("generation failed")
            message = f"generation failed: {type(error).__name__}: {error}"
            yield f"data: {json.dumps({'error': {'message': message, 'type': 'server_error'}})}\n\n"
            return
        completion_tokens = 0
        for index, answer in enumerate(answers):
            final_text, reason, tokens = engine.finish(prepared, answer.ids)
            completion_tokens += tokens
            if final_text[sent[index]:]:
                yield chunk(index, ChoiceDelta(content=final_text[sent[index]:]))
            yield chunk(index, ChoiceDelta(), reason)
        if include_usage:
            yield chunk(None, usage=CompletionUsage(prompt_tokens=prepared.prompt_tokens,
                                                    completion_tokens=completion_tokens,
                                                    total_tokens=prepared.prompt_tokens + completion_tokens))
        yield "data: [DONE]\n\n"

    return app
