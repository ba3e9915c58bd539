"""The released Tarsier, exactly: a checkpoint in the layout the release saves converts, gives the release's prompt
tokens, pixels, logits and greedy tokens, and exports back to the names the release and vLLM load.

Nothing here is derived from today's transformers classes. The fixture checkpoint is written from the tensor
names and shapes the release's `save_pretrained` produces (listed below, with the file each fact comes from),
and the reference forward is the released computation re-implemented on plain tensors (transformers 4.44, which
the release pins, cannot be installed beside 5.x).

Facts of the release used here (bytedance/tarsier, branch `tarsier`, unless said otherwise):

- `models/modeling_tarsier.py`: `TarsierForConditionalGeneration` has `vision_tower = AutoModel.from_config(
  vision_config)`, `multi_modal_projector` (`linear_1`, gelu, `linear_2`, both with bias) and `language_model =
  AutoModelForCausalLM.from_config(text_config)`; features are `hidden_states[vision_feature_layer]` without
  the CLS position ("default"); `add_split_tokens` appends the input embedding of row `image_newline_idx`
  after every patch row and of row `image_new_idx` after the frame; each `<image>` id is replaced by one
  frame's features (`_merge_input_ids_with_image_features`).
- transformers v4.44.2 (the release's pin), `models/clip/modeling_clip.py`: `CLIPVisionModel.vision_model` is a
  `CLIPVisionTransformer` with `embeddings` (`class_embedding`, `patch_embedding` conv without bias,
  `position_embedding`), `pre_layrnorm`, `encoder.layers[i]` (`self_attn.{k,v,q,out}_proj`, `layer_norm1`,
  `mlp.fc1/fc2`, `layer_norm2`) and `post_layernorm`; `hidden_states[0]` is the `pre_layrnorm` output; the
  attention scales the queries; `position_ids` is a non-persistent buffer. `models/llama/modeling_llama.py`:
  `LlamaForCausalLM` = `model.{embed_tokens, layers[i].{self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj,
  input_layernorm, post_attention_layernorm}, norm}` + `lm_head`, no biases, RMSNorm in float32, rotary
  embedding on `cat(freqs, freqs)` with `rotate_half`.
- `tools/conversation.py` + `dataset/processor.py`: the prompt is `"USER: " + "<image>" * n + "\\n" +
  instruction + " ASSISTANT: "`, tokenized with `add_special_tokens=True`.
- `dataset/processor.py` `CustomImageProcessor.resize2square`: `img.resize((max(w, h), max(w, h)))` (PIL's
  default filter: bicubic), then `LlavaProcessor`'s `CLIPImageProcessor` (resize shortest edge, centre crop,
  rescale, normalize).
- `dataset/utils.py` `sample_frame_indices`: `[0]` for one frame, else `round(i * (T - 1) / (n - 1))`.
- vLLM `vllm/model_executor/models/tarsier.py`: the vision tower is vLLM's `CLIPVisionModel`, whose weights live
  under `vision_tower.vision_model.*`; projector and `language_model.*` names as above.
- transformers v4.44 `convert_slow_tokenizer.py` `LlamaConverter` (legacy): the Llama fast tokenizer's
  `tokenizer.json` normalizes each text piece with `Prepend("▁")` + `Replace(" ", "▁")`, has no pre-tokenizer,
  a byte-fallback BPE whose ids 0-2 are `<unk>`, `<s>`, `</s>` and 3-258 the bytes `<0x00>`..`<0xFF>`, and the
  post-processor adds `<s>`; the release's `LlavaProcessor` loads it as `LlamaTokenizerFast`.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from tarsier_hf.hub.convert import tarsier_processor
from tarsier_hf.hub.convert.tarsier import convert_released, export_released
from tests.released_layout import CLIP_MEAN, CLIP_STD, write_released_layout

INSTRUCTION = "Describe the video in detail."  # DREAM-1K's prompt (data/annotations/DREAM-1k.jsonl)
IMAGE_SIZE, PATCH = 28, 14  # 2 x 2 patches per frame
VISION = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=3,
              num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=16,
              hidden_act="quick_gelu", layer_norm_eps=1e-5)
TEXT = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=64, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False, hidden_act="silu")


# ------------------------------------------------------------------------------------------ the released names


def released_vision_names(layers: int) -> dict[str, tuple]:
    """`vision_tower.vision_model.*` names/shapes the release writes for its CLIP tower (transformers 4.44)."""
    d, i, n = VISION["hidden_size"], VISION["intermediate_size"], (IMAGE_SIZE // PATCH) ** 2 + 1
    out = {
        "vision_tower.vision_model.embeddings.class_embedding": (d,),
        "vision_tower.vision_model.embeddings.patch_embedding.weight": (d, 3, PATCH, PATCH),
        "vision_tower.vision_model.embeddings.position_embedding.weight": (n, d),
        "vision_tower.vision_model.pre_layrnorm.weight": (d,),
        "vision_tower.vision_model.pre_layrnorm.bias": (d,),
        "vision_tower.vision_model.post_layernorm.weight": (d,),
        "vision_tower.vision_model.post_layernorm.bias": (d,),
    }
    for layer in range(layers):
        p = f"vision_tower.vision_model.encoder.layers.{layer}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            out[p + f"self_attn.{proj}.weight"], out[p + f"self_attn.{proj}.bias"] = (d, d), (d,)
        for norm in ("layer_norm1", "layer_norm2"):
            out[p + f"{norm}.weight"], out[p + f"{norm}.bias"] = (d,), (d,)
        out[p + "mlp.fc1.weight"], out[p + "mlp.fc1.bias"] = (i, d), (i,)
        out[p + "mlp.fc2.weight"], out[p + "mlp.fc2.bias"] = (d, i), (d,)
    return out


def released_text_names(layers: int, vocab: int) -> dict[str, tuple]:
    """`language_model.*` names/shapes of the release's Llama (transformers 4.44 `LlamaForCausalLM`)."""
    d, i = TEXT["hidden_size"], TEXT["intermediate_size"]
    kv = TEXT["num_key_value_heads"] * d // TEXT["num_attention_heads"]
    out = {"language_model.model.embed_tokens.weight": (vocab, d), "language_model.model.norm.weight": (d,),
           "language_model.lm_head.weight": (vocab, d)}
    for layer in range(layers):
        p = f"language_model.model.layers.{layer}."
        out.update({p + "self_attn.q_proj.weight": (d, d), p + "self_attn.k_proj.weight": (kv, d),
                    p + "self_attn.v_proj.weight": (kv, d), p + "self_attn.o_proj.weight": (d, d),
                    p + "mlp.gate_proj.weight": (i, d), p + "mlp.up_proj.weight": (i, d),
                    p + "mlp.down_proj.weight": (d, i), p + "input_layernorm.weight": (d,),
                    p + "post_attention_layernorm.weight": (d,)})
    return out


PROJECTOR_NAMES = {"multi_modal_projector.linear_1.weight": (TEXT["hidden_size"], VISION["hidden_size"]),
                   "multi_modal_projector.linear_1.bias": (TEXT["hidden_size"],),
                   "multi_modal_projector.linear_2.weight": (TEXT["hidden_size"], TEXT["hidden_size"]),
                   "multi_modal_projector.linear_2.bias": (TEXT["hidden_size"],)}


# ------------------------------------------------------------------------------------------ the tiny release


def write_llama_style_tokenizer(folder: Path) -> Tokenizer:
    """A small byte-fallback BPE tokenizer with the Llama fast tokenizer's pipeline (see the module docstring),
    plus the release's added `<image>` and `<pad>`. Saved as tokenizer.json + a LlamaTokenizer config."""
    # Train on "▁word" pieces (sentencepiece never merges across a word start), then lay the vocabulary out as
    # Llama's: <unk>, <s>, </s>, the 256 byte pieces (plain vocabulary entries), then the learned pieces.
    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    corpus = ["USER: Describe the video in detail. ASSISTANT: A man walks to the door and opens it slowly.",
              "A woman sits down, picks up a red cup and drinks; the cat jumps onto the table and runs away."] * 8
    trained.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=160, show_progress=False))
    learned = json.loads(trained.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for piece in sorted(learned["vocab"], key=learned["vocab"].get):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    tokenizer = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in ("<unk>", "<s>", "</s>")])
    tokenizer.pre_tokenizer = None
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(content=" ", left=1)])
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                             special_tokens=[("<s>", 1)])
    tokenizer.add_special_tokens([AddedToken("<image>", normalized=False, special=True),
                                  AddedToken("<pad>", normalized=False, special=True)])
    assert tokenizer.token_to_id("<0x0A>") == 13 and tokenizer.token_to_id("</s>") == 2
    folder.mkdir(parents=True, exist_ok=True)
    # Written as tokenizers 0.19 (the release's, through transformers 4.44.2) writes it: merges as "a b" strings.
    data = json.loads(tokenizer.to_str())
    data["model"]["merges"] = [" ".join(pair) for pair in data["model"]["merges"]]
    (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": "<pad>", "add_bos_token": True, "add_eos_token": False, "model_max_length": 4096,
    }))
    return tokenizer


def write_released_checkpoint(folder: Path, newline_row: int | None = None) -> dict:
    """A tiny Tarsier-7b-shaped checkpoint in the released layout; returns its ids, tensors and tokenizer."""
    tokenizer = write_llama_style_tokenizer(folder)
    base = tokenizer.get_vocab_size()  # <image> = base - 2, <pad> = base - 1 (7b: 32000, 32001)
    ids = {"image": base - 2, "pad": base - 1, "newline": base if newline_row is None else newline_row,
           "frame_end": base + 1, "vocab": base + 62}  # the embedding table is padded (7b: 32,064 rows)
    shapes = {**released_vision_names(VISION["num_hidden_layers"]), **PROJECTOR_NAMES,
              **released_text_names(TEXT["num_hidden_layers"], ids["vocab"])}
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for name, shape in shapes.items():
        if name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "layrnorm.weight")):
            tensors[name] = 1 + 0.1 * torch.randn(shape, generator=generator)
        else:
            tensors[name] = 0.2 * torch.randn(shape, generator=generator)
    table = tensors["language_model.model.embed_tokens.weight"]
    table[ids["newline"]], table[ids["frame_end"]] = 0.5, -0.5
    # Rows past the text vocabulary score 0 (random text rows score higher), so greedy decoding stays in text,
    # as a trained model does: the converter's `<video>` row is never generated.
    tensors["language_model.lm_head.weight"][ids["image"]:] = 0.0
    # Two shards, the way the released safetensors are split.
    names = sorted(tensors)
    write_released_layout(folder, tensors, [names[: len(names) // 2], names[len(names) // 2:]], ids, VISION, TEXT)
    return {"ids": ids, "tensors": tensors, "tokenizer": Tokenizer.from_file(str(folder / "tokenizer.json")),
            "path": folder}


# ------------------------------------------------------------------------------------------ the released forward


def _layer_norm(x, w, prefix):
    return F.layer_norm(x, x.shape[-1:], w[prefix + ".weight"], w[prefix + ".bias"], eps=VISION["layer_norm_eps"])


def _linear(x, w, prefix, bias=True):
    return F.linear(x, w[prefix + ".weight"], w[prefix + ".bias"] if bias else None)


def released_vision_features(w: dict, pixel_values: torch.Tensor) -> torch.Tensor:
    """CLIP layer -2 without CLS -> projector: `(frames, patches, text_hidden)` (released computation)."""
    v = "vision_tower.vision_model."
    heads, d = VISION["num_attention_heads"], VISION["hidden_size"]
    x = F.conv2d(pixel_values, w[v + "embeddings.patch_embedding.weight"], stride=PATCH).flatten(2).transpose(1, 2)
    x = torch.cat([w[v + "embeddings.class_embedding"].expand(x.shape[0], 1, d), x], dim=1)
    x = x + w[v + "embeddings.position_embedding.weight"][None]
    x = _layer_norm(x, w, v + "pre_layrnorm")
    states = [x]
    for layer in range(VISION["num_hidden_layers"]):
        p = f"{v}encoder.layers.{layer}."
        h = _layer_norm(x, w, p + "layer_norm1")
        split = lambda t: t.view(t.shape[0], t.shape[1], heads, d // heads).transpose(1, 2)  # noqa: E731
        q = split(_linear(h, w, p + "self_attn.q_proj") * (d // heads) ** -0.5)
        k, val = split(_linear(h, w, p + "self_attn.k_proj")), split(_linear(h, w, p + "self_attn.v_proj"))
        attn = (torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ val).transpose(1, 2).reshape(h.shape)
        x = x + _linear(attn, w, p + "self_attn.out_proj")
        h = _linear(_layer_norm(x, w, p + "layer_norm2"), w, p + "mlp.fc1")
        x = x + _linear(h * torch.sigmoid(1.702 * h), w, p + "mlp.fc2")  # quick_gelu
        states.append(x)
    patches = states[-2][:, 1:]
    return _linear(F.gelu(_linear(patches, w, "multi_modal_projector.linear_1")), w, "multi_modal_projector.linear_2")


def released_embeddings(w: dict, ids: dict, prompt_ids: list[int], features: torch.Tensor) -> torch.Tensor:
    """`add_split_tokens` + `_merge_input_ids_with_image_features`: `(L, hidden)` LM inputs."""
    table = w["language_model.model.embed_tokens.weight"]
    frames, patches, d = features.shape
    rows = int(math.sqrt(patches))
    grid = torch.cat([features.view(frames, rows, rows, d), table[ids["newline"]].expand(frames, rows, 1, d)], 2)
    per_frame = torch.cat([grid.reshape(frames, -1, d), table[ids["frame_end"]].expand(frames, 1, d)], 1)
    pieces, frame = [], 0
    for token in prompt_ids:
        if token == ids["image"]:
            pieces.append(per_frame[frame])
            frame += 1
        else:
            pieces.append(table[token][None])
    assert frame == frames
    return torch.cat(pieces)


def _rms(x, weight):
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + TEXT["rms_norm_eps"])).to(x.dtype)


def released_llama_logits(w: dict, embeddings: torch.Tensor) -> torch.Tensor:
    """Llama (eager attention, as the release with flash-attention swapped out): `(L, hidden)` -> `(L, vocab)`."""
    heads, kv_heads, d = TEXT["num_attention_heads"], TEXT["num_key_value_heads"], TEXT["hidden_size"]
    head_dim, length = d // heads, embeddings.shape[0]
    inv_freq = 1.0 / (TEXT["rope_theta"] ** (torch.arange(0, head_dim, 2).float() / head_dim))
    freqs = torch.arange(length).float()[:, None] * inv_freq[None]
    cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()
    rotate = lambda t: torch.cat([-t[..., head_dim // 2:], t[..., : head_dim // 2]], -1)  # noqa: E731
    mask = torch.full((length, length), torch.finfo(torch.float32).min).triu(1)
    x = embeddings
    for layer in range(TEXT["num_hidden_layers"]):
        p = f"language_model.model.layers.{layer}."
        h = _rms(x, w[p + "input_layernorm.weight"])
        q = F.linear(h, w[p + "self_attn.q_proj.weight"]).view(length, heads, head_dim).transpose(0, 1)
        k = F.linear(h, w[p + "self_attn.k_proj.weight"]).view(length, kv_heads, head_dim).transpose(0, 1)
        v = F.linear(h, w[p + "self_attn.v_proj.weight"]).view(length, kv_heads, head_dim).transpose(0, 1)
        q, k = q * cos + rotate(q) * sin, k * cos + rotate(k) * sin
        k, v = k.repeat_interleave(heads // kv_heads, 0), v.repeat_interleave(heads // kv_heads, 0)
        scores = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim) + mask, dim=-1, dtype=torch.float32)
        x = x + F.linear((scores @ v).transpose(0, 1).reshape(length, d), w[p + "self_attn.o_proj.weight"])
        h = _rms(x, w[p + "post_attention_layernorm.weight"])
        x = x + F.linear(F.silu(F.linear(h, w[p + "mlp.gate_proj.weight"])) * F.linear(h, w[p + "mlp.up_proj.weight"]),
                         w[p + "mlp.down_proj.weight"])
    return F.linear(_rms(x, w["language_model.model.norm.weight"]), w["language_model.lm_head.weight"])


def released_greedy(w: dict, ids: dict, prompt_ids: list[int], features: torch.Tensor, steps: int) -> list[int]:
    """Greedy decoding of the release (`do_sample=False`, stop at `</s>`): the new token ids."""
    out: list[int] = []
    for _ in range(steps):
        logits = released_llama_logits(w, released_embeddings(w, ids, prompt_ids + out, features))
        out.append(int(logits[-1].argmax()))
        if out[-1] == 2:
            break
    return out


def released_prompt_ids(release: dict, frames: int) -> list[int]:
    """The release's prompt for Tarsier-7b, tokenized as its `LlamaTokenizerFast` does (tokenizer.json as is)."""
    prompt = "USER: " + "<image>" * frames + "\n" + INSTRUCTION + " ASSISTANT: "
    return release["tokenizer"].encode(prompt).ids


def released_pixels(frames: np.ndarray) -> torch.Tensor:
    """resize2square (PIL default filter) + transformers 4.44 CLIPImageProcessor (shortest-edge bicubic resize,
    centre crop, float64 rescale cast to float32, float32 normalize): `(n, 3, S, S)`."""
    out = []
    for frame in frames:
        image = Image.fromarray(frame)
        side = max(image.size)
        image = image.resize((side, side))  # resize2square: no filter given
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), resample=Image.BICUBIC, reducing_gap=None)
        array = (np.asarray(image).astype(np.float64) * (1 / 255)).astype(np.float32)
        array = (array - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
        out.append(array.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out))


def load_tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            out.update({k: handle.get_tensor(k) for k in handle.keys()})
    return out


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> dict:
    return write_released_checkpoint(tmp_path_factory.mktemp("release") / "Tarsier-tiny")


@pytest.fixture(scope="module")
def converted(release, tmp_path_factory) -> Path:
    return convert_released(release["path"], tmp_path_factory.mktemp("converted") / "out")


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """Two non-square frames (the resize path matters): `(2, 40, 60, 3)` uint8."""
    return np.random.default_rng(0).integers(0, 256, size=(2, 40, 60, 3), dtype=np.uint8)


def our_inputs(folder: Path, frames: np.ndarray):
    from processing_tarsier import TarsierProcessor

    processor = TarsierProcessor.from_pretrained(folder)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": INSTRUCTION}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor, text, processor(text=text, videos=[frames], num_frames=len(frames))


def expand(release: dict, prompt_ids: list[int]) -> list[int]:
    ids = release["ids"]
    frame = ([ids["image"]] * 2 + [ids["newline"]]) * 2 + [ids["frame_end"]]
    return [t for token in prompt_ids for t in (frame if token == ids["image"] else [token])]


# ------------------------------------------------------------------------------------------ tests


def test_released_checkpoint_converts_and_matches_the_release_exactly(release, converted, frames):
    """Prompt tokens, pixels, logits and greedy tokens of the converted model equal the released computation."""
    from modeling_tarsier import TarsierForConditionalGeneration

    processor, text, inputs = our_inputs(converted, frames)
    assert text == "USER: <video>\n" + INSTRUCTION + " ASSISTANT: "  # trailing space, as the release
    prompt_ids = released_prompt_ids(release, len(frames))
    assert release["tokenizer"].id_to_token(prompt_ids[-1]) == "▁"  # the space is a token of its own
    assert inputs["input_ids"][0].tolist() == expand(release, prompt_ids)
    assert processor.resize_mode == "released"
    torch.testing.assert_close(inputs["pixel_values"], released_pixels(frames), rtol=0, atol=1e-6)

    weights = release["tensors"]
    features = released_vision_features(weights, released_pixels(frames))
    reference = released_llama_logits(weights, released_embeddings(weights, release["ids"], prompt_ids, features))
    model = TarsierForConditionalGeneration.from_pretrained(converted).eval()
    with torch.no_grad():
        logits = model(**inputs).logits[0]
    torch.testing.assert_close(logits, reference, rtol=0, atol=2e-5)

    steps = 6
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=steps, do_sample=False)[0, inputs["input_ids"].shape[1]:]
        expected = released_greedy(weights, release["ids"], prompt_ids, features, steps)
    assert generated.tolist()[: len(expected)] == expected


def test_export_writes_the_names_and_tokenizer_class_the_release_loads(release, converted, tmp_path):
    exported = export_released(converted, tmp_path / "exported")
    tensors = load_tensors(exported)
    expected = {**released_vision_names(VISION["num_hidden_layers"]), **PROJECTOR_NAMES,
                **released_text_names(TEXT["num_hidden_layers"], release["ids"]["vocab"])}
    assert {k: tuple(v.shape) for k, v in tensors.items()} == expected
    assert all(torch.equal(tensors[k], release["tensors"][k]) for k in expected)
    tokenizer_config = json.loads((exported / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "LlamaTokenizerFast"
    assert tokenizer_config["add_bos_token"] is True and tokenizer_config.get("add_eos_token", False) is False
    # The exported tokenizer.json, read as the release's fast tokenizer reads it, gives the release's prompt ids;
    # its merges are "a b" strings, the only form tokenizers 0.19 (pinned through transformers 4.44.2) reads.
    merges = json.loads((exported / "tokenizer.json").read_text())["model"]["merges"]
    assert all(isinstance(m, str) and len(m.split(" ")) == 2 for m in merges)
    exported_tokenizer = Tokenizer.from_file(str(exported / "tokenizer.json"))
    prompt = "USER: " + "<image>" * 2 + "\n" + INSTRUCTION + " ASSISTANT: "
    assert exported_tokenizer.encode(prompt).ids == released_prompt_ids(release, 2)
    config = json.loads((exported / "config.json").read_text())
    assert (config["image_token_index"], config["image_newline_idx"], config["image_new_idx"]) == (
        release["ids"]["image"], release["ids"]["newline"], release["ids"]["frame_end"])


def test_newline_row_that_is_an_existing_token_is_accepted(tmp_path, frames, caplog):
    """`image_newline_idx` on `<0x0A>` (id 13), which the release accepts (it only looks the row up): the
    converter warns, and the converted model still equals the released computation."""
    from modeling_tarsier import TarsierForConditionalGeneration

    release = write_released_checkpoint(tmp_path / "newline13", newline_row=13)
    with caplog.at_level(logging.WARNING, logger=tarsier_processor.__name__):
        out = convert_released(release["path"], tmp_path / "converted")
    assert any("row 13" in r.message and "<0x0A>" in r.message for r in caplog.records)
    processor, _, inputs = our_inputs(out, frames)
    assert processor.image_newline_token == "<0x0A>" and processor.image_newline_token_id == 13
    prompt_ids = released_prompt_ids(release, len(frames))
    assert inputs["input_ids"][0].tolist() == expand(release, prompt_ids)
    # Ordinary text still tokenizes and decodes as before ("\n" is byte 0x0A).
    assert processor.tokenizer.decode(processor.tokenizer("a\nb").input_ids, skip_special_tokens=True) == "a\nb"
    weights = release["tensors"]
    features = released_vision_features(weights, released_pixels(frames))
    reference = released_llama_logits(weights, released_embeddings(weights, release["ids"], prompt_ids, features))
    model = TarsierForConditionalGeneration.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits[0], reference, rtol=0, atol=2e-5)


def test_released_resize_is_two_resamplings(tmp_path):
    """`resize_mode="released"` gives the release's pixels; the single resize of "stretch" does not."""
    from transformers import AutoTokenizer

    from processing_tarsier import TarsierProcessor

    write_llama_style_tokenizer(tmp_path)
    released, stretch = (TarsierProcessor.from_parts(AutoTokenizer.from_pretrained(tmp_path), "clip",
                                                     image_size=IMAGE_SIZE, resize_mode=mode)
                         for mode in ("released", "stretch"))
    big = np.random.default_rng(1).integers(0, 256, size=(2, 90, 160, 3), dtype=np.uint8)
    torch.testing.assert_close(released.preprocess_frames(big), released_pixels(big), rtol=0, atol=1e-6)
    assert not torch.allclose(stretch.preprocess_frames(big), released_pixels(big), atol=1e-3)


def test_sampling_follows_the_release_for_one_frame_and_instruction_counts():
    from frame_sampling_tarsier import InstructionSampling, UniformSampling

    # dataset/utils.py sample_frame_indices: n == 1 -> [0]; else round(i * (T - 1) / (n - 1)).
    assert UniformSampling(1).indices(100).tolist() == [0]
    assert UniformSampling(8).indices(100).tolist() == [round(i * 99 / 7) for i in range(8)]
    # "instruction" honours num_frames; complex clips get twice as many (the paper's 16 vs 8).
    assert len(InstructionSampling(16).indices(100)) == 16
    assert len(InstructionSampling(8).indices(100, complex_clip=True)) == 16
    assert InstructionSampling(4).indices(100).tolist() == [0, 33, 66, 99]
