"""Each row's own decoding inside a shared batch: a request's sampling with its own seeded generator
(`RequestSampler`) and the logits processor that, per row, records log-probabilities, subtracts OpenAI's
frequency / presence penalties and draws a sampled row's token (`RowLogits`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

if TYPE_CHECKING:
    from tarsier_hf.inference.serve.batching import Row


class RequestSampler:
    """Sampling with a request's own random generator, so a `seed` gives the same tokens whatever is generated
    beside it (in its batch or on other threads). The warpers are `generate`'s own (temperature, top-k, top-p,
    min-p, applied in its order)."""

    def __init__(self, temperature: float | None, top_k: int | None, top_p: float | None, min_p: float | None,
                 seed: int, device):
        warpers = []
        if temperature is not None and temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(temperature))
        if top_k:
            warpers.append(TopKLogitsWarper(top_k))
        if top_p is not None and top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p))
        if min_p is not None:
            warpers.append(MinPLogitsWarper(min_p))
        self.warpers = LogitsProcessorList(warpers)
        self.generator = torch.Generator(device).manual_seed(seed % 2**64)

    def draw(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Scores `(r, V)` of the request's rows -> the drawn token of each row `(r, 1)`."""
        probs = torch.softmax(self.warpers(input_ids, scores).float(), dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator)


class RowLogits(LogitsProcessor):
    """The per-row part of each step's scores `(B, V)`, in OpenAI's order: records the log-probabilities of rows
    that asked for them (the model's distribution, before penalties and sampling; after the processors the
    checkpoint's own generation config adds, such as its `repetition_penalty`, if it sets any), subtracts
    `frequency_penalty * count + presence_penalty * (count > 0)` from each token's logit (`count`: how often the
    row has generated it), and for a sampled request draws each of its rows' token with its own generator and
    leaves only that token possible (the batch then decodes by argmax)."""

    def __init__(self, rows: list[Row], prompt_length: int, device: torch.device):
        self.prompt_length = prompt_length
        logged = [i for i, row in enumerate(rows) if row.request.prepared.top_logprobs is not None]
        self.logged = {i: k for k, i in enumerate(logged)}  # row -> its row of `step_logprobs`
        self.logged_rows = torch.tensor(logged, dtype=torch.long, device=device)
        penalised = [i for i, row in enumerate(rows)
                     if row.request.prepared.frequency_penalty or row.request.prepared.presence_penalty]
        self.penalised = torch.tensor(penalised, dtype=torch.long, device=device)
        self.counted = torch.arange(len(penalised), device=device)  # the rows of `counts`
        self.frequency = torch.tensor([rows[i].request.prepared.frequency_penalty for i in penalised],
                                      device=device)[:, None]
        self.presence = torch.tensor([rows[i].request.prepared.presence_penalty for i in penalised],
                                     device=device)[:, None]
        self.counts: torch.Tensor | None = None  # (len(penalised), V)
        self.sampled = []  # (row indices of a sampled request, its sampler)
        for request in dict.fromkeys(row.request for row in rows):
            if request.prepared.sampler is not None:
                indices = [i for i, row in enumerate(rows) if row.request is request]
                self.sampled.append((torch.tensor(indices, device=device), request.prepared.sampler))
        self.active = bool(self.logged or penalised or self.sampled)
        self.step_logprobs: torch.Tensor | None = None  # (len(logged), V) of the latest step

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.logged:
            self.step_logprobs = torch.log_softmax(scores[self.logged_rows].float(), dim=-1)
        if len(self.penalised):
            if self.counts is None:
                self.counts = torch.zeros(len(self.penalised), scores.shape[1], device=scores.device)
                self.frequency, self.presence = self.frequency.to(scores), self.presence.to(scores)
            if input_ids.shape[1] > self.prompt_length:
                self.counts[self.counted, input_ids[self.penalised, -1]] += 1
            scores[self.penalised] -= self.frequency * self.counts + self.presence * (self.counts > 0)
        for indices, sampler in self.sampled:
            drawn = sampler.draw(input_ids[indices], scores[indices])
            scores[indices] = torch.full_like(scores[indices], -float("inf")).scatter_(1, drawn, 0.0)
        return scores
