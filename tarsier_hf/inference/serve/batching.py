"""Requests in batches: a prepared request (`Prepared`) waits at the scheduler (`BatchScheduler`) until a batch of
its kind forms, and each of its `n` answers becomes a row of one `model.generate` (`Row`), followed after every
step by `RowProgress` (its tokens, log-probabilities, stream, and its own end: end of sequence, `max_tokens`, a
stop string or its client gone) and streamed by `RowStreamer`."""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator

import torch
from transformers import StoppingCriteria, TextStreamer

if TYPE_CHECKING:
    from tarsier_hf.inference.serve.sampling import RequestSampler, RowLogits


@dataclass
class Prepared:
    """A request turned into model inputs and decoding settings.

    Attributes:
        inputs: the processor's tensors of the one sample, on the CPU: the per-token ones (`SEQUENCE_KEYS`:
            `input_ids`, `attention_mask`, ...) `(L,)`, the media ones as the processor returns them (Tarsier's
            `pixel_values` `(F, 3, S, S)` and `num_frames` `(1,)`; Qwen2-VL's `pixel_values_videos` `(P, D)` and
            `video_grid_thw` `(1, 3)`).
        max_tokens: most new tokens of each answer.
        stop: stop strings, none empty (left out of the answer).
        n: answers asked; each is one row of a batch.
        sampler: the request's sampling settings and random generator; None for greedy decoding.
        top_logprobs: None when no log-probabilities are asked, else the alternatives wanted per token (0-20).
        frequency_penalty, presence_penalty: OpenAI's additive penalties (0: none).
    """

    inputs: dict[str, torch.Tensor]
    max_tokens: int
    stop: list[str]
    n: int = 1
    sampler: RequestSampler | None = None
    top_logprobs: int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0

    @property
    def prompt_tokens(self) -> int:
        """`L`, the prompt's tokens (text and frames)."""
        return len(self.inputs["input_ids"])

    @property
    def batch_key(self) -> tuple[str, ...]:
        """Requests batch together when their inputs have the same tensors (a text-only prompt and a video one, or
        Qwen2-VL images and videos, have different ones); decoding settings are per row and never split a batch."""
        return tuple(sorted(self.inputs))


@dataclass
class Answer:
    """One generated answer (a row of a batch): its new token ids and, when asked, per token
    `(token id, log-probability, [(alternative id, log-probability)] * top_logprobs)`."""

    ids: list[int] = field(default_factory=list)
    logprobs: list[tuple[int, float, list[tuple[int, float]]]] = field(default_factory=list)


@dataclass(eq=False)
class QueuedRequest:
    """A prepared request waiting for (or in) a batch; `rows` are filled when its batch starts."""

    prepared: Prepared
    future: Future
    cancelled: threading.Event
    sink: Callable[[int, str, list], None] | None
    arrived: float = field(default_factory=time.monotonic)
    rows: list[Row] = field(default_factory=list)


class BatchScheduler:
    """Forms batches from submitted requests and runs each on a bounded pool of threads.

    Loop: wait for a free generation thread and a waiting request; let the oldest waiting request wait while
    other requests are still being read (`arriving`), at most until `window_s` after it was submitted and only
    until `max_batch_size` rows of its kind wait (a request alone, with nothing arriving, starts at once); then
    batch, in submission order, the waiting requests with the oldest's `batch_key` whose rows fit in
    `max_batch_size`. Requests whose client left while waiting are dropped (their future gets no answers). While
    every thread is busy, requests gather, so the next batch takes all that fit.
    """

    def __init__(self, run: Callable[[list[QueuedRequest]], None], max_batch_size: int, window_s: float,
                 max_batches: int):
        self.run, self.max_batch_size, self.window_s = run, max_batch_size, window_s
        self.changed = threading.Condition()  # guards `waiting` and `reading`
        self.waiting: list[QueuedRequest] = []
        self.reading = 0
        self.slots = threading.Semaphore(max_batches)
        self.pool = ThreadPoolExecutor(max_workers=max_batches, thread_name_prefix="generate")
        threading.Thread(target=self._loop, name="batcher", daemon=True).start()

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Marks a request being read: the next batch may wait for it (up to the window)."""
        with self.changed:
            self.reading += 1
        try:
            yield
        finally:
            with self.changed:
                self.reading -= 1
                self.changed.notify()

    def submit(self, request: QueuedRequest) -> None:
        with self.changed:
            self.waiting.append(request)
            self.changed.notify()

    def _loop(self) -> None:
        while True:
            self.slots.acquire()
            with self.changed:
                self.changed.wait_for(lambda: self.waiting)
                deadline = self.waiting[0].arrived + self.window_s
                self.changed.wait_for(lambda: self.reading == 0 or self._rows_like_oldest() >= self.max_batch_size,
                                      timeout=max(0.0, deadline - time.monotonic()))
                batch = self._take_batch()
            if batch:
                self.pool.submit(self._run, batch)
            else:
                self.slots.release()

    def _rows_like_oldest(self) -> int:
        key = self.waiting[0].prepared.batch_key
        return sum(r.prepared.n for r in self.waiting if r.prepared.batch_key == key)

    def _take_batch(self) -> list[QueuedRequest]:
        for request in [r for r in self.waiting if r.cancelled.is_set()]:
            self.waiting.remove(request)
            request.future.set_result([])
        if not self.waiting:
            return []
        key, batch, rows = self.waiting[0].prepared.batch_key, [], 0
        for request in self.waiting:
            if request.prepared.batch_key == key and rows + request.prepared.n <= self.max_batch_size:
                batch.append(request)
                rows += request.prepared.n
        self.waiting = [r for r in self.waiting if r not in batch]
        return batch

    def _run(self, batch: list[QueuedRequest]) -> None:
        try:
            self.run(batch)
        finally:
            self.slots.release()


@dataclass(eq=False)
class Row:
    """One answer of a batch: answer `choice` of `request`, generated so far into `answer`."""

    request: QueuedRequest
    choice: int
    answer: Answer = field(default_factory=Answer)
    streamer: RowStreamer | None = None
    done: bool = False


class RowProgress(StoppingCriteria):
    """After each step: appends every live row's new token to its answer (with its log-probabilities when asked)
    and stream, and ends a row at its end-of-sequence token, its own `max_tokens`, a stop string, or when its
    client has left. An ended row is padded by `generate` from then on; the others go on. A request's future is
    set when its last row ends.

    Stop strings: each step decodes only the last `longest stop + 4` new tokens of a row (every token decodes to at
    least one character, so a stop string the newest token completes lies inside them): a few microseconds a step
    for any stop list, where transformers' `stop_strings` first builds tables over the whole vocabulary (measured
    with SmolLM2's tokenizer: 0.6 s for one 8-character string, 7.5 s for eight of 64, 75 s for 300 of 8)."""

    def __init__(self, rows: list[Row], logits: RowLogits, tokenizer, eos_ids: set[int]):
        self.rows, self.logits, self.tokenizer, self.eos_ids = rows, logits, tokenizer, eos_ids
        # per row, the new tokens a stop string completed by the newest one can span (see above)
        self.stop_windows = [max(map(len, row.request.prepared.stop), default=0) + 4 for row in rows]

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        newest = input_ids[:, -1].tolist()
        for i, row in enumerate(self.rows):
            if row.done:
                continue
            prepared = row.request.prepared
            if row.request.cancelled.is_set():
                self.finish(row)
                continue
            token = newest[i]
            row.answer.ids.append(token)
            if prepared.top_logprobs is not None:
                logprobs = self.logits.step_logprobs[self.logits.logged[i]]
                top = torch.topk(logprobs, prepared.top_logprobs)
                row.answer.logprobs.append((token, float(logprobs[token]),
                                            list(zip(top.indices.tolist(), top.values.tolist()))))
            if row.streamer is not None:
                row.streamer.put(torch.tensor([token]))
            if (token in self.eos_ids or len(row.answer.ids) >= prepared.max_tokens
                    or (prepared.stop and self._stopped(row.answer.ids[-self.stop_windows[i]:], prepared.stop))):
                self.finish(row)
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)

    def _stopped(self, tail_ids: list[int], stop: list[str]) -> bool:
        tail = self.tokenizer.decode(tail_ids, skip_special_tokens=True)
        return any(s in tail for s in stop)

    def finish(self, row: Row) -> None:
        """End `row`: flush its stream; answer its request when this was its last live row."""
        row.done = True
        if row.streamer is not None:
            row.streamer.end()
        request = row.request
        if all(r.done for r in request.rows) and not request.future.done():
            request.future.set_result([r.answer for r in request.rows])


class RowStreamer(TextStreamer):
    """Turns one row's tokens into text as `TextStreamer` does (whole words, complete characters) and hands each
    piece to `sink(choice, text, logprobs)`, with the row's log-probability entries (`Answer.logprobs`) added since
    the previous piece; `end` hands over the rest, text or not."""

    def __init__(self, tokenizer, sink: Callable[[int, str, list], None], row: Row):
        super().__init__(tokenizer, skip_special_tokens=True)
        self.sink, self.row, self.given = sink, row, 0

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        logprobs = self.row.answer.logprobs[self.given:]
        if text or logprobs or stream_end:
            self.given += len(logprobs)
            self.sink(self.row.choice, text, logprobs)
