"""AutoDQ (Automatic Description Quality) as an `evaluate` metric.

Tarsier paper, section 4.2 and Appendix B: an LLM judge extracts at most 10 events from each description, then
labels every event against the other description as entailment / neutral / contradiction.
recall = share of reference events entailed by the prediction, precision = share of prediction events entailed
by the reference, F1 of the two.

    metric = evaluate.load("path/to/eval/autodq")               # preset "robust"; any folder, any working dir
    metric = evaluate.load("path/to/eval/autodq", config_name="official")
    result = metric.compute(predictions=[...], references=[...], judge="openai",
                            base_url="http://127.0.0.1:8000/v1", judge_model="my-model")
    # judge settings at load time, so that evaluate.combine([cider, autodq]).compute(...) needs none
    autodq = evaluate.load("path/to/eval/autodq", config_name="robust", judge="openai",
                           base_url="http://127.0.0.1:8000/v1", judge_model="my-model")

Every helper module is imported here directly (relative imports) so that `evaluate` copies them next to this file:
it copies only the modules this script itself imports, so some names below are imported for that alone.
"""

from __future__ import annotations

import datasets
import evaluate

from .aggregate import BUCKETS
from .judge import ChatJudge
from .judge_cache import JudgeCache
from .openai_judge import OpenAIChatJudge
from .parsing import LABELS
from .pipeline import build_judge, make_samples, run_autodq
from .prompts import DEFAULT_PROMPT_VERSION
from .scoring import PRESETS, get_config
from .transformers_judge import TransformersChatJudge

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
    timeout, max_retries: per request seconds and attempts for transient errors (default 60 s / 6, or
        600 s / 2 for a judge on this machine).
    cache_path (str | False | None): SQLite judge cache (default ~/.cache/tarsier/autodq/judge_cache.sqlite).
    concurrency (int): samples in flight (default 4, or 1 for a judge on this machine).
    repeats (int): judge runs with seeds seed + 1000 r.
    bootstrap (int): bootstrap resamples over videos for the confidence interval (0 disables).
    progress (bool): tqdm bar over the samples. fail_fast (bool): stop with advice when the first samples all
        time out.
    Every argument from `preset` on can also be given to `evaluate.load(..., **settings)` (`timeout` as
    `judge_timeout`, since `evaluate` takes `timeout` itself); arguments of `compute` win.
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


# compute() arguments that can also be set at load time (evaluate.load(..., **settings)), with their defaults
_JUDGE_DEFAULTS = {
    "preset": None, "judge": "openai", "judge_model": None, "base_url": None, "api_key": None, "endpoint_kind": None,
    "timeout": None, "max_retries": None, "cache_path": None, "device": "cpu", "concurrency": None, "repeats": 1,
    "bootstrap": 1000, "progress": True, "fail_fast": True,
}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Autodq(evaluate.Metric):
    def __init__(self, config_name=None, judge_timeout=None, **kwargs):
        # evaluate.load passes its own options (cache_dir, timeout of its file lock, ...) with ours: split them
        settings = {k: kwargs.pop(k) for k in list(kwargs) if k in _JUDGE_DEFAULTS or k in _CONFIG_KEYS}
        if judge_timeout is not None:
            settings["timeout"] = judge_timeout
        super().__init__(config_name=config_name, **kwargs)
        if config_name not in (None, "default") and config_name not in PRESETS:
            raise ValueError(f"autodq: config_name={config_name!r} is not a preset; choose one of {sorted(PRESETS)}")
        self.judge_settings = settings

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
        **arguments,
    ):
        unknown = set(arguments) - set(_JUDGE_DEFAULTS) - set(_CONFIG_KEYS)
        if unknown:
            raise ValueError(f"autodq.compute: unknown argument(s) {sorted(unknown)}")
        options = {**_JUDGE_DEFAULTS, **self.judge_settings, **arguments}
        preset = options.pop("preset") or (self.config_name if self.config_name in PRESETS else "robust")
        # an override given as None (e.g. temperature=None) means "do not send it", as in the official preset
        config = get_config(preset, **{k: options.pop(k) for k in list(options) if k in _CONFIG_KEYS})
        samples = make_samples(predictions, references, reference_events, categories, n_events, n_subjects, n_shots)
        chat_judge = build_judge(
            options["judge"], config, judge_model=options["judge_model"], base_url=options["base_url"],
            api_key=options["api_key"], endpoint_kind=options["endpoint_kind"], timeout=options["timeout"],
            max_retries=options["max_retries"], cache_path=options["cache_path"], device=options["device"],
        )
        return run_autodq(samples, chat_judge, config, concurrency=options["concurrency"], repeats=options["repeats"],
                          bootstrap=options["bootstrap"], progress=options["progress"], fail_fast=options["fail_fast"])
