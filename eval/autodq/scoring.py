"""AutoDQ per-sample scoring: extract events, judge entailment both ways, turn labels into recall/precision.

recall    = share of reference events entailed by the prediction,
precision = share of prediction events entailed by the reference (Tarsier paper, section 4.2).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .judge import ChatJudge, JudgeCallError
from .parsing import (
    INVALID,
    MISSING,
    ParseError,
    parse_entailment,
    parse_entailment_release,
    parse_events,
    parse_events_release,
)
from .prompts import DEFAULT_PROMPT_VERSION, PromptSet, get_prompts


@dataclass(frozen=True)
class AutoDQConfig:
    """How AutoDQ scores; see `PRESETS`.

    Attributes:
        preset: name recorded with the results.
        judge_model / temperature / seed / max_tokens: judge settings used when the metric builds the judge
            (None = not sent to the endpoint).
        prompt_version: key of `prompts.PROMPTS`.
        protocol: "robust" (this repo's lenient parsing, see `parsing.py`) or "release" (the released evaluator,
            `evaluation/metrics/evaluate_dream_gpt.py`: descriptions lower-cased, the text sent for extraction
            also with `"` -> `'`; strict parsing, `parse_events_release` / `parse_entailment_release`; an empty
            event list is still sent to the judge with the other description as the one event, and needs a
            valid answer, although that side scores `empty_events_score` whatever the answer).
        max_events: events kept from an extraction answer; None keeps all (released evaluator).
        positive_labels: labels that count as "entailed".
        drop_failed: True drops samples the judge keeps failing on from every average (released evaluator);
            False scores them 0 and reports them.
        max_parse_attempts: answers asked for per step before giving up on an unreadable or incomplete one.
        retry_temperature: temperature for re-asks after an unreadable answer (None keeps the judge's).
        accept_partial: after the last attempt, use an entailment answer that leaves events out or mislabels
            them (those count as not entailed, and the sample is flagged `partial`) instead of failing.
        empty_events_score: recall (precision) when the reference (prediction) has no events; the released
            evaluator uses 1.0.
        f1_when_zero: F1 when recall + precision = 0 (per sample and in every average); the released
            evaluator's `2 * r * p / (r + p)` on numpy floats gives nan.
    """

    preset: str = "robust"
    judge_model: str = "gpt-3.5-turbo-0125"
    temperature: float | None = 0.0
    seed: int | None = 1234
    max_tokens: int | None = 1024
    prompt_version: str = DEFAULT_PROMPT_VERSION
    protocol: str = "robust"
    max_events: int | None = 10
    positive_labels: tuple[str, ...] = ("entailment",)
    drop_failed: bool = False
    max_parse_attempts: int = 3
    retry_temperature: float | None = 0.7
    accept_partial: bool = True
    empty_events_score: float = 1.0
    f1_when_zero: float = 0.0

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol={self.protocol!r} is unknown; choose one of {PROTOCOLS}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["positive_labels"] = list(self.positive_labels)
        return d


PROTOCOLS = ("robust", "release")

PRESETS: dict[str, AutoDQConfig] = {
    # the released DREAM-1K evaluator (evaluation/metrics/evaluate_dream_gpt.py), in every choice it makes
    "official": AutoDQConfig(
        preset="official",
        temperature=None,
        seed=None,
        max_tokens=None,
        prompt_version="tarsier-release-v1",
        protocol="release",
        max_events=None,
        drop_failed=True,
        max_parse_attempts=10,
        retry_temperature=None,
        accept_partial=False,
        f1_when_zero=math.nan,
    ),
    "robust": AutoDQConfig(),
}


def get_config(preset: str = "robust", **overrides) -> AutoDQConfig:
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r} is unknown; choose one of {sorted(PRESETS)}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(AutoDQConfig)}
    if unknown:
        raise ValueError(f"unknown AutoDQ option(s): {sorted(unknown)}")
    return dataclasses.replace(PRESETS[preset], **overrides)


@dataclass
class Sample:
    """One video: the prediction, the reference, optional reference events and metadata for breakdowns."""

    index: int
    prediction: str
    reference: str
    reference_events: list[str] | None = None
    category: str | None = None
    n_events: int | None = None
    n_subjects: int | None = None
    n_shots: int | None = None


@dataclass
class SampleScore:
    index: int
    repeat: int
    category: str | None
    recall: float | None
    precision: float | None
    f1: float | None
    failed: bool = False
    error: str | None = None
    partial: bool = False
    reference_events_source: str = "data"
    reference_events: list[str] = field(default_factory=list)
    prediction_events: list[str] = field(default_factory=list)
    recall_labels: list[str] = field(default_factory=list)
    precision_labels: list[str] = field(default_factory=list)
    n_events: int | None = None
    n_subjects: int | None = None
    n_shots: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def f1_score(recall: float, precision: float, when_zero: float = 0.0) -> float:
    """Harmonic mean of recall and precision; `when_zero` when both are 0."""
    return when_zero if recall + precision == 0 else 2 * recall * precision / (recall + precision)


def _is_judge_failure(exc: BaseException) -> bool:
    """A judge that kept failing or answering unreadably. Matched by class name too: a judge built from
    `tarsier_hf.eval.autodq.judge` and used by the copy of this module that `evaluate.load` imports raises the other
    copy's `JudgeCallError`."""
    if isinstance(exc, (JudgeCallError, ParseError)):
        return True
    return any(cls.__name__ in ("JudgeCallError", "ParseError") for cls in type(exc).__mro__)


class AutoDQScorer:
    """Scores samples with one judge; thread-safe, `concurrency` samples in flight."""

    def __init__(self, judge: ChatJudge, config: AutoDQConfig, concurrency: int = 4):
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.judge = judge
        self.config = config
        self.prompts: PromptSet = get_prompts(config.prompt_version)
        self.concurrency = concurrency

    @property
    def _release(self) -> bool:
        return self.config.protocol == "release"

    def _parse_events(self, answer: str) -> list[str]:
        if self._release:
            events = parse_events_release(answer)
            return events if self.config.max_events is None else events[: self.config.max_events]
        return parse_events(answer, self.config.max_events)[0]

    def _overrides(self, repeat: int) -> dict:
        seed = self.judge.settings.seed
        return {"seed": seed + 1000 * repeat} if (repeat and seed is not None) else {}

    def _tag(self, repeat: int) -> str | None:
        return f"r{repeat}" if repeat else None

    def extract(self, description: str, repeat: int = 0) -> list[str]:
        """At most `max_events` events of `description`. Raises ParseError / JudgeCallError."""
        text = description.lower().replace('"', "'") if self._release else description
        events, _ = self.judge.chat_parsed(
            self.prompts.extraction_messages(text),
            self._parse_events,
            self.config.max_parse_attempts,
            self.config.retry_temperature,
            tag=self._tag(repeat),
            **self._overrides(repeat),
        )
        return events

    def entail(self, premise: str, events: list[str], repeat: int = 0) -> tuple[list[str], bool]:
        """One label per event judged against `premise`, and whether the answer was partial (robust protocol)."""
        messages = self.prompts.entailment_messages(premise, events)
        best: list[str] | None = None

        def parse(answer: str) -> list[str]:
            nonlocal best
            labels = parse_entailment(answer, events)
            bad = sum(label in (MISSING, INVALID) for label in labels)
            if best is None or bad < sum(label in (MISSING, INVALID) for label in best):
                best = labels
            if bad:
                raise ParseError(f"{bad} of {len(events)} events missing or mislabelled in the judge's answer")
            return labels

        try:
            labels, _ = self.judge.chat_parsed(
                messages,
                parse,
                self.config.max_parse_attempts,
                self.config.retry_temperature,
                tag=self._tag(repeat),
                **self._overrides(repeat),
            )
            return labels, False
        except ParseError:
            if best is not None and self.config.accept_partial:
                return best, True
            raise

    def _entail_release(self, premise: str, events: list[str], asked: list[str], repeat: int) -> list[str]:
        """The release's entailment step: `asked` events (the other description when `events` is empty) against
        the lower-cased premise; labels of `events` (none when it is empty)."""
        labels, _ = self.judge.chat_parsed(
            self.prompts.entailment_messages(premise.lower(), asked),
            lambda answer: parse_entailment_release(answer, len(events)),
            self.config.max_parse_attempts,
            self.config.retry_temperature,
            tag=self._tag(repeat),
            **self._overrides(repeat),
        )
        return labels if events else []

    def _ratio(self, labels: list[str]) -> float:
        if not labels:
            return self.config.empty_events_score
        return sum(label in self.config.positive_labels for label in labels) / len(labels)

    def score(self, sample: Sample, repeat: int = 0) -> SampleScore:
        """Score one sample; judge failures are recorded in the result, never raised."""
        result = SampleScore(
            sample.index, repeat, sample.category, None, None, None,
            n_events=sample.n_events, n_subjects=sample.n_subjects, n_shots=sample.n_shots,
        )
        try:
            if sample.reference_events is not None:
                ref_events = list(sample.reference_events)
            else:
                result.reference_events_source = "extracted"
                ref_events = self.extract(sample.reference, repeat)
            result.reference_events = ref_events
            result.prediction_events = pred_events = self.extract(sample.prediction, repeat)
            partial_r = partial_p = False
            if self._release:  # asked even when a side has no events (then about the other description)
                result.recall_labels = self._entail_release(
                    sample.prediction, ref_events, ref_events or [sample.reference.lower().replace("\n", " ")], repeat)
                result.precision_labels = self._entail_release(
                    sample.reference, pred_events, pred_events or [sample.prediction.lower().replace("\n", " ")],
                    repeat)
            else:
                if ref_events:
                    result.recall_labels, partial_r = self.entail(sample.prediction, ref_events, repeat)
                if pred_events:
                    result.precision_labels, partial_p = self.entail(sample.reference, pred_events, repeat)
            result.partial = partial_r or partial_p
        except Exception as exc:
            if not _is_judge_failure(exc):
                raise
            result.failed, result.error = True, f"{type(exc).__name__}: {exc}"
            if not self.config.drop_failed:
                result.recall = result.precision = result.f1 = 0.0
            return result
        result.recall = self._ratio(result.recall_labels)
        result.precision = self._ratio(result.precision_labels)
        result.f1 = f1_score(result.recall, result.precision, self.config.f1_when_zero)
        if result.n_events is None:
            result.n_events = len(ref_events)
        return result
