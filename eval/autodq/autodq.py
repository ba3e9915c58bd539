"""AutoDQ (Automatic Description Quality) as an `evaluate` metric.

Tarsier paper, section 4.2 and Appendix B: an LLM judge extracts at most 10 events from each description, then
labels every event against the other description as entailment / neutral / contradiction.
recall = share of reference events entailed by the prediction, precision = share of prediction events entailed
by the reference, F1 of the two.

    metric = evaluate.load("eval/autodq")                      # preset "robust"
    metric = evaluate.load("eval/autodq", config_name="official")
    result = metric.compute(predictions=[...], references=[...], judge="openai",
                            base_url="http://127.0.0.1:8000/v1", judge_model="my-model")

Every helper is imported here directly (relative imports) so that `evaluate` copies them next to this file.
"""

from __future__ import annotations

import datasets
import evaluate

from .aggregate import BUCKETS
from .judge import ChatJudge
from .parsing import LABELS
from .pipeline import build_judge, make_samples, run_autodq
from .prompts import DEFAULT_PROMPT_VERSION
from .scoring import PRESETS, get_config

_CITATION = """\
@article{wang2024tarsier,
  title={Tarsier: Recipes for Training and Evaluating Large Video Description Models},
  author={Wang, Jiawei and Yuan, Liping and Zhang, Yuchen and Sun, Haomiao},
  note={ByteDance Research; code and DREAM-1K at https://github.com/bytedance/tarsier},
  year={2024}
}
"""

_DESCRIPTION = """\
AutoDQ scores a generated video description against a reference description with an LLM judge in two steps:
event extraction (at most 10 events per description) and entailment of each event by the other description.
It reports event recall, precision and F1 per sample, a micro average over samples, DREAM-1K's official macro
average over categories, and breakdowns by number of events, subjects and shots.
"""

_KWARGS_DESCRIPTION = f"""
Args:
    predictions (list[str]): generated descriptions.
    references (list[str]): reference descriptions.
    reference_events (list[list[str]] | None): reference events shipped with the data (DREAM-1K
        `extra_info.events`); entries that are None are extracted by the judge.
    categories (list[str] | None): category per sample (DREAM-1K `dataset`); enables the macro average.
    n_events, n_subjects, n_shots (list[int] | None): complexity per sample, for the breakdowns
        (buckets: {dict((k, [b[0] for b in v]) for k, v in BUCKETS.items())}).
    preset (str): {sorted(PRESETS)}; defaults to the config name given to `evaluate.load`, else "robust".
    judge (str | ChatJudge): "openai" (any OpenAI-compatible endpoint), "transformers" (in process) or a judge.
    judge_model, base_url, api_key, endpoint_kind: which judge and where.
    temperature, seed, max_tokens, prompt_version, protocol, max_events, max_parse_attempts, drop_failed,
        retry_temperature, accept_partial: override the preset.
    timeout, max_retries: per request seconds and attempts for transient errors.
    cache_path (str | False | None): SQLite judge cache (default ~/.cache/tarsier/autodq/judge_cache.sqlite).
    concurrency (int): samples in flight. repeats (int): judge runs with seeds seed + 1000 r.
    bootstrap (int): bootstrap resamples over videos for the confidence interval (0 disables).
Returns:
    dict with "recall", "precision", "f1" (macro when categories are given, else micro), "micro", "macro",
    "breakdowns", "samples" (events and labels {LABELS} per sample), "n_failed", "failed", "repeats",
    "bootstrap_ci", "judge" (model, endpoint kind, temperature, seed, max tokens, prompt version), "calls".
Default prompt version: {DEFAULT_PROMPT_VERSION}.
"""

_CONFIG_KEYS = (
    "temperature", "seed", "max_tokens", "prompt_version", "max_parse_attempts", "drop_failed",
    "retry_temperature", "accept_partial", "max_events", "protocol",
)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Autodq(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            reference_urls=["https://github.com/bytedance/tarsier"],
        )

    def _compute(
        self,
        predictions,
        references,
        reference_events=None,
        categories=None,
        n_events=None,
        n_subjects=None,
        n_shots=None,
        preset: str | None = None,
        judge: str | ChatJudge = "openai",
        judge_model: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        endpoint_kind: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 6,
        cache_path=None,
        device: str = "cpu",
        concurrency: int = 4,
        repeats: int = 1,
        bootstrap: int = 1000,
        **overrides,
    ):
        if preset is None:
            preset = self.config_name if self.config_name in PRESETS else "robust"
        unknown = set(overrides) - set(_CONFIG_KEYS)
        if unknown:
            raise ValueError(f"autodq.compute: unknown argument(s) {sorted(unknown)}")
        # an override given as None (e.g. temperature=None) means "do not send it", as in the official preset
        config = get_config(preset, **overrides)
        samples = make_samples(predictions, references, reference_events, categories, n_events, n_subjects, n_shots)
        chat_judge = build_judge(
            judge, config, judge_model=judge_model, base_url=base_url, api_key=api_key, endpoint_kind=endpoint_kind,
            timeout=timeout, max_retries=max_retries, cache_path=cache_path, device=device,
        )
        return run_autodq(samples, chat_judge, config, concurrency=concurrency, repeats=repeats, bootstrap=bootstrap)
