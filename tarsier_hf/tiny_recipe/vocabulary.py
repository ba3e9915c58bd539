"""Cut a byte-level BPE language model's vocabulary to the tokens a closed corpus uses.

SmolLM2's 49,152-row embedding table is tied to its LM head, so every labelled position of a training step is
projected onto 49,152 rows: on a 2-core CPU that projection costs as much as the two decoder layers the tiny
recipe keeps. DREAM-S texts use a few hundred of those tokens. `cut_vocabulary` keeps

- every token the given texts tokenise to, and every intermediate token of the merges that build them,
- the tokens of the byte-level alphabet (so any text the original encodes still encodes, byte by byte where a
  merge is gone),
- every added (special) token,

renumbers them in their original order, keeps exactly the merges among kept tokens (in their original ranks) and
slices the embedding table (and the tied head) to the kept rows. BPE applies, at each step, the lowest-ranked merge
among the pairs present; every merge the original tokenizer applies to a corpus word is kept, and every kept merge
is an original one, so corpus texts tokenise to the same tokens (renumbered), and the cut model's logits are the
original model's logits at the kept tokens.
"""

from __future__ import annotations

import json
from typing import Iterable

import torch


def _merge_pairs(merges: list) -> list[tuple[str, str]]:
    """tokenizer.json stores merges as `[a, b]` lists (tokenizers >= 0.20) or `"a b"` strings."""
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in merges]


def kept_token_ids(tokenizer, texts: Iterable[str], spec: dict | None = None) -> list[int]:
    """Sorted ids of the tokens to keep for `texts` (see the module docstring); `spec` is the tokenizer's
    tokenizer.json as a dict, when the caller has it already."""
    from tokenizers.pre_tokenizers import ByteLevel

    spec = json.loads(tokenizer.backend_tokenizer.to_str()) if spec is None else spec
    model = spec["model"]
    if model.get("type") != "BPE" or (spec.get("pre_tokenizer") or {}).get("type") != "ByteLevel":
        raise ValueError(f"cut_vocabulary needs a byte-level BPE tokenizer, got model {model.get('type')!r} with "
                         f"pre-tokenizer {(spec.get('pre_tokenizer') or {}).get('type')!r}")
    vocab: dict[str, int] = model["vocab"]
    built_by = {}
    for a, b in _merge_pairs(model["merges"]):
        built_by.setdefault(a + b, (a, b))
    keep = {token["id"] for token in spec["added_tokens"]}
    # (SmolLM2's vocabulary lacks 21 of the 256: bytes it cannot encode in the first place)
    keep |= {vocab[char] for char in ByteLevel.alphabet() if char in vocab}
    id_to_token = {i: t for t, i in vocab.items()}
    stack = []
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        stack += ids
    while stack:
        i = stack.pop()
        if i in keep:
            continue
        keep.add(i)
        token = id_to_token.get(i)
        if token is not None and token in built_by:
            stack += [vocab[part] for part in built_by[token]]
    return sorted(keep)


def cut_tokenizer_json(spec: dict, kept: list[int]) -> dict:
    """A tokenizer.json (as a dict) holding only the `kept` ids, renumbered 0..len(kept)-1 in order."""
    new_id = {old: new for new, old in enumerate(kept)}
    model = spec["model"]
    vocab = {token: new_id[i] for token, i in model["vocab"].items() if i in new_id}
    merges = [[a, b] for a, b in _merge_pairs(model["merges"]) if a in vocab and b in vocab and a + b in vocab]
    added = [{**token, "id": new_id[token["id"]]} for token in spec["added_tokens"]]
    return {**spec, "added_tokens": added, "model": {**model, "vocab": vocab, "merges": merges}}


def cut_vocabulary(model, tokenizer, texts: Iterable[str]):
    """Return `(model, tokenizer)` with the vocabulary cut to what `texts` need (module docstring).

    `model` is a causal LM with tied input / output embeddings (the head follows the sliced table); it is changed
    in place. The returned tokenizer is a new `PreTrainedTokenizerFast` with the same special tokens.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    if not getattr(model.config, "tie_word_embeddings", False):
        raise ValueError("cut_vocabulary slices the embedding table and relies on a head tied to it")
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    kept = kept_token_ids(tokenizer, texts, spec)
    spec = cut_tokenizer_json(spec, kept)
    special = {name: getattr(tokenizer, name) for name in ("bos_token", "eos_token", "unk_token", "pad_token")
               if getattr(tokenizer, name, None) is not None}
    new_tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), **special)
    new_tokenizer.chat_template = tokenizer.chat_template

    rows = model.get_input_embeddings().weight.data[torch.tensor(kept)].clone()
    model.resize_token_embeddings(len(kept), mean_resizing=False)
    model.get_input_embeddings().weight.data.copy_(rows)
    model.tie_weights()
    for config in (model.config, model.generation_config):
        for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
            token = special.get(name[:-3])
            if hasattr(config, name) and token is not None:
                setattr(config, name, new_tokenizer.convert_tokens_to_ids(token))
    model.config.vocab_size = len(kept)
    return model, new_tokenizer
