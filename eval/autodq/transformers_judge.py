"""`TransformersChatJudge`: a chat model run in this process (`apply_chat_template` + `generate`) as an LLM judge."""

from __future__ import annotations

import os
import threading

from .judge import ChatJudge
from .judge_cache import JudgeCache, JudgeSettings


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
