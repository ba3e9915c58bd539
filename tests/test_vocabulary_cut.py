"""The tiny recipe's vocabulary cut (`tarsier_hf.tiny_recipe.vocabulary`) on the real SmolLM2-135M-Instruct
tokenizer and weights, and on real DREAM-S training conversations rendered by the recipe's chat template.

Facts of SmolLM2 written here: its vocabulary has 49,152 tokens, 17 of them added (special) tokens with ids 0-16
(`<|endoftext|>` = 0, `<|im_start|>` = 1, `<|im_end|>` = 2), and its byte-level alphabet lacks 21 of the 256
byte tokens."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from processing_tarsier import CHAT_TEMPLATES
from tarsier_hf.dream_s import BuildConfig, build_dataset
from tarsier_hf.jsonl import read_jsonl_objects
from tarsier_hf.tiny_recipe.vocabulary import cut_vocabulary, kept_token_ids

UNSEEN = "Ünïcödé 🦉 quokka-zebra 12345, naïve\tcafé\n\nthe END"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, smollm2_dir):
    out = tmp_path_factory.mktemp("dreams")
    build_dataset(BuildConfig(out=str(out), seed=3, num_train=40, num_test=4, size=32, num_workers=1))
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    texts = [tokenizer.apply_chat_template(row["messages"], chat_template=CHAT_TEMPLATES["chatml"], tokenize=False)
             for name in ("stage1", "stage2") for _, row in read_jsonl_objects(out / f"{name}.jsonl", RuntimeError)]
    return tokenizer, texts


@pytest.fixture(scope="module")
def cut(corpus, smollm2_dir, tmp_path_factory):
    tokenizer, texts = corpus
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    model.model.layers = model.model.layers[:1]
    model.config.num_hidden_layers = 1
    original = {k: v.clone() for k, v in model.state_dict().items()}
    small, small_tokenizer = cut_vocabulary(model, tokenizer, texts)
    folder = tmp_path_factory.mktemp("cut")
    small.save_pretrained(folder)
    small_tokenizer.save_pretrained(folder)
    return original, folder


def test_smollm2_facts_the_cut_relies_on(corpus):
    tokenizer, _ = corpus
    assert len(tokenizer) == 49152
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    assert spec["model"]["type"] == "BPE" and spec["pre_tokenizer"]["type"] == "ByteLevel"
    assert [t["id"] for t in spec["added_tokens"]] == list(range(17))
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]


def test_corpus_tokenises_to_the_same_tokens_renumbered(corpus, cut):
    tokenizer, texts = corpus
    _, folder = cut
    small = AutoTokenizer.from_pretrained(folder)
    kept = kept_token_ids(tokenizer, texts)
    assert 300 < len(small) == len(kept) < 2000, len(small)
    renumber = {old: new for new, old in enumerate(kept)}
    before = tokenizer(texts, add_special_tokens=False)["input_ids"]
    after = small(texts, add_special_tokens=False)["input_ids"]
    assert [[renumber[i] for i in ids] for ids in before] == after
    # the same token strings, and the special tokens keep their ids and roles
    assert [tokenizer.convert_ids_to_tokens(ids) for ids in before[:20]] == [
        small.convert_ids_to_tokens(ids) for ids in after[:20]]
    assert (small.bos_token, small.eos_token, small.pad_token) == (tokenizer.bos_token, tokenizer.eos_token,
                                                                 tokenizer.pad_token)
    assert small.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]


def test_text_outside_the_corpus_still_round_trips(corpus, cut):
    tokenizer, _ = corpus
    small = AutoTokenizer.from_pretrained(cut[1])
    ids = small(UNSEEN, add_special_tokens=False)["input_ids"]
    assert small.decode(ids) == tokenizer.decode(tokenizer(UNSEEN, add_special_tokens=False)["input_ids"])
    assert len(ids) > len(tokenizer(UNSEEN, add_special_tokens=False)["input_ids"])  # merges are gone: more pieces


def test_cut_model_gives_the_original_logits_at_the_kept_tokens(corpus, cut, smollm2_dir):
    tokenizer, texts = corpus
    original_state, folder = cut
    original = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    original.model.layers = original.model.layers[:1]
    original.config.num_hidden_layers = 1
    original.load_state_dict(original_state)
    small = AutoModelForCausalLM.from_pretrained(folder)
    small_tokenizer = AutoTokenizer.from_pretrained(folder)
    kept = torch.tensor(kept_token_ids(tokenizer, texts))
    assert small.get_input_embeddings().weight.shape == (len(kept), 576)
    assert small.lm_head.weight.data_ptr() == small.get_input_embeddings().weight.data_ptr()  # still tied
    with torch.no_grad():
        for text in texts[:3]:
            a = original(tokenizer(text, return_tensors="pt").input_ids).logits[0][:, kept]
            b = small(small_tokenizer(text, return_tensors="pt").input_ids).logits[0]
            torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
    assert small.config.eos_token_id == small_tokenizer.eos_token_id == tokenizer.eos_token_id


def test_refuses_untied_heads(corpus, smollm2_dir):
    tokenizer, texts = corpus
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    model.config.tie_word_embeddings = False
    with pytest.raises(ValueError, match="tied"):
        cut_vocabulary(model, tokenizer, texts[:2])
