"""Batched generation in `tarsier-serve` (issue #38): requests that arrive together share one left-padded `generate`,
and every row keeps what a request had alone (greedy answers, stop strings, `max_tokens`, seeds, streams,
cancellation, early answers), for a tiny Tarsier and a tiny converted Tarsier2; the OpenAI parameters `n`,
`logprobs` / `top_logprobs`, `frequency_penalty` / `presence_penalty`, checked against `generate` itself.

Engine tests run in process (requests submitted together in `Engine.arriving`, as the server submits each
request, are one batch; the model's `generate` is counted); the protocol tests run the real server on 127.0.0.1
through the `openai` client.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from tarsier_hf.inference.engine import collate_left_padded
from tarsier_hf.inference.serve.engine import Engine
from tarsier_hf.inference.serve.protocol import ChatCompletionRequest
from tests.colour_clips import write_colour_clips
from tests.sensitive_tarsier import input_sensitive_copy
from tests.test_serving import start_server, stop_server
from tests.test_tarsier2_generation import tarsier2_folder  # noqa: F401 - a fixture

NAME = "tiny"
WINDOW_MS = 300  # a batch waits at most this for requests still arriving
COLOURS = ("red", "green", "blue", "white")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return write_colour_clips(tmp_path_factory.mktemp("batching")) / "videos"


@pytest.fixture(scope="module")
def tarsier_folder(tiny_tarsier, tmp_path_factory) -> Path:
    return input_sensitive_copy(tiny_tarsier[0], tmp_path_factory.mktemp("sensitive") / "tarsier")


def counted_engine(folder: Path, clips: Path, **kwargs) -> Engine:
    """An engine whose `model.generate` records the batch size of each call in `engine.batches`."""
    engine = Engine(str(folder), NAME, "cpu", trust_remote_code=True, allowed_local_media_path=str(clips),
                    batch_window_ms=WINDOW_MS, **kwargs)
    generate, engine.batches = engine.model.generate, []

    def counted(**inputs):
        engine.batches.append(inputs["input_ids"].shape[0])
        return generate(**inputs)

    engine.model.generate = counted
    return engine


@pytest.fixture(scope="module")
def tarsier_engine(tarsier_folder, clips) -> Engine:
    return counted_engine(tarsier_folder, clips)


@pytest.fixture(scope="module")
def tarsier2_engine(tarsier2_folder, clips) -> Engine:  # noqa: F811 - the imported fixture
    return counted_engine(tarsier2_folder, clips)


def chat_request(content, **fields) -> ChatCompletionRequest:
    return ChatCompletionRequest(model=NAME, messages=[{"role": "user", "content": content}],
                                 **{"max_tokens": 8, "temperature": 0, **fields})


def video_request(clips: Path, colour: str, prompt: str = "Describe the video.", **fields) -> ChatCompletionRequest:
    return chat_request([{"type": "video_url", "video_url": {"url": str(clips / f"{colour}.mp4")}},
                    {"type": "text", "text": prompt}], **fields)


def run(engine: Engine, requests: list[ChatCompletionRequest], together: bool) -> list[list[tuple[str, str, int]]]:
    """`engine.finish` of every answer of every request: submitted together (one window) or one by one."""
    prepared = [engine.prepare(r) for r in requests]
    if together:
        with engine.arriving():  # as the server submits a request: a batch starting meanwhile waits for the rest
            futures = [engine.generate(p) for p in prepared]
        answers = [f.result(timeout=300) for f in futures]
    else:
        answers = [engine.generate(p).result(timeout=300) for p in prepared]
    return [[engine.finish(p, a.ids) for a in rows] for p, rows in zip(prepared, answers)]


@pytest.mark.parametrize("engine_fixture", ["tarsier_engine", "tarsier2_engine"])
def test_a_batch_answers_as_one_by_one(engine_fixture, clips, request):
    """Videos with prompts of different lengths, different `max_tokens` and a stop string, plus two text-only
    requests: at most one `generate` per kind of input (videos, text), and every greedy answer equals the
    one-by-one one."""
    engine = request.getfixturevalue(engine_fixture)
    requests = [video_request(clips, colour, "Describe the video." + " In detail, please." * i, max_tokens=4 + 2 * i)
                for i, colour in enumerate(COLOURS)]
    requests += [chat_request("Say hello."), chat_request("Name a colour.", max_tokens=5)]
    engine.batches.clear()
    alone = run(engine, requests, together=False)
    assert engine.batches == [1] * len(requests)
    stop = alone[0][0][0][2:4]  # two characters from inside the first answer
    requests[0] = video_request(clips, COLOURS[0], "Describe the video.", max_tokens=4, stop=[stop])
    alone[0] = run(engine, requests[:1], together=False)[0]
    assert alone[0][0][1] == "stop"
    engine.batches.clear()
    together = run(engine, requests, together=True)
    assert sum(engine.batches) == 6 and len(engine.batches) <= 2  # text-only prompts batch apart where their
    # tensors differ (Qwen2-VL); Tarsier's processor gives them the same tensors as video prompts
    assert together == alone
    if engine_fixture == "tarsier_engine":  # its answers depend on the input, so the equality above means more
        assert len({answer[0][0] for answer in alone[1:4]}) == 3


def test_a_short_row_is_answered_before_its_batch_ends(tarsier_engine):
    """A 2-token request batched with a 300-token one is answered when its row is done, not when the batch is."""
    long, short = (tarsier_engine.prepare(chat_request("Say hello.", max_tokens=tokens)) for tokens in (300, 2))
    tarsier_engine.batches.clear()
    with tarsier_engine.arriving():
        futures = [tarsier_engine.generate(p) for p in (long, short)]
    assert len(futures[1].result(timeout=300)[0].ids) == 2
    assert not futures[0].done()
    assert len(futures[0].result(timeout=300)[0].ids) == 300 and tarsier_engine.batches == [2]


class LeavesAfter(threading.Event):
    """A client that leaves after `checks` looks at its cancel flag (the batch looks once per token and row)."""

    def __init__(self, checks: int):
        super().__init__()
        self.checks = checks

    def is_set(self) -> bool:
        self.checks -= 1
        return self.checks < 0 or super().is_set()


def test_a_cancelled_row_ends_and_the_others_go_on(tarsier_engine):
    prepared = [tarsier_engine.prepare(chat_request(text, max_tokens=60)) for text in ("Say hello.", "Count.", "Hi")]
    alone = [tarsier_engine.generate(p).result(timeout=300)[0].ids for p in prepared]
    tarsier_engine.batches.clear()
    with tarsier_engine.arriving():
        futures = [tarsier_engine.generate(prepared[0]),
                   tarsier_engine.generate(prepared[1], cancelled=LeavesAfter(6)),
                   tarsier_engine.generate(prepared[2])]
    assert len(futures[1].result(timeout=300)[0].ids) == 5  # the scheduler looked once, then 5 tokens
    assert [futures[i].result(timeout=300)[0].ids for i in (0, 2)] == [alone[0], alone[2]]
    assert tarsier_engine.batches == [3]


def test_sampled_rows_keep_their_seed_in_a_batch(tarsier_engine):
    """Sampling settings are per row: greedy rows, a seeded row and a row with other settings share one batch,
    and the seeded one answers as alone; `n` answers of a seeded request are the same wherever they run."""
    seeded = chat_request("Say hello.", max_tokens=12, temperature=1.0, seed=7)
    three = chat_request("Say hello.", max_tokens=12, temperature=1.0, seed=7, n=3)
    alone = run(tarsier_engine, [seeded, three], together=False)
    tarsier_engine.batches.clear()
    together = run(tarsier_engine, [chat_request("Name a colour."), seeded, three,
                                    chat_request("Count.", temperature=0.7, top_p=0.9, seed=3)], together=True)
    assert tarsier_engine.batches == [6] and together[1:3] == alone
    assert len(alone[1]) == 3 and len({answer[0] for answer in alone[1]}) > 1
    assert run(tarsier_engine, [chat_request("Say hello.", max_tokens=12, temperature=1.0, seed=8)],
               together=False)[0] != alone[0]


class AdditivePenalties(LogitsProcessor):
    """OpenAI's penalties as its documentation states them, written plainly: the logit of token j loses
    `count_j * frequency + (count_j > 0) * presence`, `count_j` being how often j was generated before."""

    def __init__(self, prompt_length: int, frequency: float, presence: float):
        self.prompt_length, self.frequency, self.presence = prompt_length, frequency, presence

    def __call__(self, input_ids, scores):
        for row in range(scores.shape[0]):
            tokens, counts = input_ids[row, self.prompt_length:].unique(return_counts=True)
            scores[row, tokens] -= counts * self.frequency + self.presence
        return scores


def batch_of_one(engine: Engine, prepared) -> dict:
    return collate_left_padded([prepared.inputs], engine.pad_token_id)


def test_penalties_are_openai_s_additive_ones(tarsier_engine):
    """Each penalised answer is `generate`'s greedy answer under `AdditivePenalties`, alone and in a batch beside
    an unpenalised row (which stays its own answer); a penalty of 1.5 changes the answer."""
    engine, tokens = tarsier_engine, 24
    plain = run(engine, [chat_request("Say hello.", max_tokens=tokens)], together=False)[0]
    settings = ((1.5, 0.0), (0.0, 1.5), (0.7, -0.5))
    requests = [chat_request("Say hello.", max_tokens=tokens, frequency_penalty=f, presence_penalty=p)
                for f, p in settings]
    for (frequency, presence), request in zip(settings, requests):
        prepared = engine.prepare(request)
        with torch.inference_mode():
            out = engine.model.generate(
                **batch_of_one(engine, prepared), max_new_tokens=tokens, do_sample=False, pad_token_id=engine.pad_token_id,
                logits_processor=LogitsProcessorList([AdditivePenalties(prepared.prompt_tokens, frequency, presence)]))
        expected = out[0, prepared.prompt_tokens:].tolist()
        assert engine.generate(prepared).result(timeout=300)[0].ids == expected
    together = run(engine, [chat_request("Say hello.", max_tokens=tokens), *requests], together=True)
    assert together == [plain, *run(engine, requests, together=False)]
    assert together[1] != plain and together[2] != plain


def test_logprobs_are_the_model_s_distribution(tarsier_engine):
    """Per token: the chosen token's log-probability and the top alternatives of `log_softmax` of `generate`'s
    own logits (`output_logits`), for a greedy row in a batch."""
    engine = tarsier_engine
    prepared = engine.prepare(chat_request("Say hello.", max_tokens=6, logprobs=True, top_logprobs=3))
    with torch.inference_mode():
        out = engine.model.generate(**batch_of_one(engine, prepared), max_new_tokens=6, do_sample=False,
                                    pad_token_id=engine.pad_token_id, output_logits=True,
                                    return_dict_in_generate=True)
    expected = torch.log_softmax(torch.stack(out.logits)[:, 0].float(), dim=-1)  # (T, V)
    count = engine.prepare(chat_request("Count."))
    with engine.arriving():
        futures = [engine.generate(prepared), engine.generate(count)]
    answer = futures[0].result(timeout=300)[0]
    futures[1].result(timeout=300)
    assert answer.ids == out.sequences[0, prepared.prompt_tokens:].tolist()
    for step, (token, logprob, top) in enumerate(answer.logprobs):
        assert logprob == pytest.approx(expected[step, token].item(), abs=1e-4)
        assert [i for i, _ in top] == expected[step].topk(3).indices.tolist()
        assert [v for _, v in top] == pytest.approx(expected[step].topk(3).values.tolist(), abs=1e-4)


# -- the protocol, through the real server --------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(tarsier_folder, tmp_path_factory):
    server, url = start_server(["--model_name_or_path", str(tarsier_folder), "--trust_remote_code",
                                "--served_model_name", NAME, "--device", "cpu", "--max_n", "3",
                                "--max_batch_size", "4"],
                               tmp_path_factory.mktemp("logs") / "serve.log")
    yield openai.OpenAI(base_url=url, api_key="EMPTY", timeout=120, max_retries=0)
    stop_server(server)


def ask(client, text: str, **fields):
    return client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": text}],
                                          **{"max_tokens": 8, "temperature": 0, **fields})


def test_concurrent_clients_get_their_one_by_one_answers(client):
    prompts = ["Say hello.", "Count to three.", "Name a colour.", "Hi"]
    alone = [ask(client, prompt).choices[0].message.content for prompt in prompts]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda prompt: ask(client, prompt).choices[0].message.content, prompts))
    assert together == alone and len(set(alone)) > 1


def test_n_answers_streamed_and_whole(client):
    whole = ask(client, "Say hello.", n=3, temperature=1.0, seed=5)
    assert [choice.index for choice in whole.choices] == [0, 1, 2]
    chunks = list(ask(client, "Say hello.", n=3, temperature=1.0, seed=5, stream=True,
                      stream_options={"include_usage": True}))
    streamed = ["".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i)
                for i in range(3)]
    assert streamed == [choice.message.content for choice in whole.choices]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert reasons == [choice.finish_reason for choice in whole.choices]


def test_an_empty_stop_string_stops_nothing(client):
    """`"stop": [""]` answers as no stop, whole and streamed (the stream once held back -1 characters, dropping one
    character of every piece after the first)."""
    plain = ask(client, "Say hello.", max_tokens=16).choices[0].message.content
    assert ask(client, "Say hello.", max_tokens=16, stop=[""]).choices[0].message.content == plain
    chunks = list(ask(client, "Say hello.", max_tokens=16, stop=[""], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == plain


def test_logprobs_in_openai_s_shape(client):
    """`choices[i].logprobs.content`, whole and streamed, one entry per completion token."""
    response = ask(client, "Say hello.", logprobs=True, top_logprobs=2)
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0 and entry.bytes == list(entry.token.encode())
        assert len(entry.top_logprobs) == 2 and entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)  # greedy: the chosen one is the top
    assert ask(client, "Say hello.", logprobs=True).choices[0].logprobs.content[0].top_logprobs == []
    assert ask(client, "Say hello.").choices[0].logprobs is None
    chunks = list(ask(client, "Say hello.", logprobs=True, top_logprobs=2, stream=True))
    streamed = [entry for c in chunks if c.choices and c.choices[0].logprobs for entry in c.choices[0].logprobs.content]
    assert streamed == content  # the streamed entries together are the whole answer's
    sampled = ask(client, "Say hello.", n=2, temperature=1.0, seed=3, logprobs=True)
    assert sum(len(c.logprobs.content) for c in sampled.choices) == sampled.usage.completion_tokens


def test_penalties_change_the_answer(client):
    plain = ask(client, "Say hello.", max_tokens=24).choices[0].message.content
    assert ask(client, "Say hello.", max_tokens=24, frequency_penalty=2.0).choices[0].message.content != plain


@pytest.mark.parametrize("fields, param, words", [
    ({"n": 2}, "n", ["greedy", "temperature"]),
    ({"n": 4, "temperature": 1.0}, "n", ["--max_n"]),
    ({"top_logprobs": 2}, "top_logprobs", ["logprobs"]),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", ["20"]),
    ({"frequency_penalty": 2.5}, "frequency_penalty", ["2"]),
    ({"presence_penalty": -3}, "presence_penalty", ["-2"]),
])
def test_what_cannot_be_honoured_is_a_400_naming_it(client, fields, param, words):
    with pytest.raises(openai.BadRequestError) as error:
        ask(client, "Say hello.", **fields)
    assert error.value.body["param"] == param, error.value.body
    assert all(word in error.value.body["message"] for word in words), error.value.body


def test_batches_side_by_side_answer_as_alone(tarsier2_engine, clips):
    """A video batch and a text batch generating at once on their own threads answer as alone (Qwen2-VL stores the
    latest generation's rope deltas on the model object; this checks that batches beside each other, whose deltas
    differ, do not disturb each other)."""
    first = [video_request(clips, colour, max_tokens=40) for colour in COLOURS[:2]]
    second = [chat_request("Say hello.", max_tokens=30)]  # no video: other rope deltas
    alone = run(tarsier2_engine, first + second, together=False)
    prepared = [tarsier2_engine.prepare(r) for r in first + second]
    tarsier2_engine.batches.clear()
    with tarsier2_engine.arriving():
        futures = [tarsier2_engine.generate(p) for p in prepared[:2]]
    while not tarsier2_engine.batches:  # the first batch has started
        threading.Event().wait(0.001)
    futures.append(tarsier2_engine.generate(prepared[2]))
    answers = [[tarsier2_engine.finish(p, a.ids) for a in f.result(timeout=300)] for p, f in zip(prepared, futures)]
    assert tarsier2_engine.batches == [2, 1] and answers == alone
