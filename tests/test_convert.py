"""Released Tarsier checkpoints -> our format and back (tarsier_hf/hub/convert/, tarsier_hf/hub/publish.py).

A tiny checkpoint is written here in the released layout (bytedance/tarsier `models/modeling_tarsier.py`:
`model_type` "llava", `TarsierForConditionalGeneration`, `vision_tower.vision_model.*`,
`multi_modal_projector.linear_1/2.*`, `language_model.model.*`, `language_model.lm_head.*`, sharded
safetensors with an index, a tokenizer with `<image>` then `<pad>` after the base vocabulary and an embedding
table padded by 64 rows whose rows `image_newline_idx` / `image_new_idx` hold the row-newline and end-of-frame
embeddings). The converted model is compared with a reference forward written from the published description
(frames -> CLIP layer -2 without CLS -> MLP -> newline embedding after every patch row -> end-of-frame embedding
-> LLM) that uses plain `CLIPVisionModel` / `LlamaForCausalLM` on the original tensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from huggingface_hub import ModelCard
from transformers import AutoTokenizer, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from tarsier_hf.hub.convert.__main__ import main as convert_main
from tarsier_hf.hub.convert.shards import check_weights_fit, list_shards, stream_shards
from tarsier_hf.hub.convert.tarsier import convert_released, export_released
from tarsier_hf.hub.convert.tarsier_layout import released_config_from_tarsier, released_to_ours, tarsier_config_from_released
from tarsier_hf.hub.convert.tarsier_processor import detect_chat_format, map_special_tokens
from tarsier_hf.hub import publish as hub_publish
from tarsier_hf.hub.checkpoint import CODE_FILES, CheckpointError
from tests.released_layout import write_released_layout

REPO = Path(__file__).resolve().parents[1]
IMAGE_SIZE, PATCH = 28, 14  # 2 x 2 patches per frame -> 2 * (2 + 1) + 1 = 7 LM positions
PROMPT = "Describe the video."


# ----------------------------------------------------------------------------------------------- tiny release


def released_ids(base_vocab: int) -> dict[str, int]:
    """Rows of the released layout, shifted onto a base tokenizer: `<image>`, `<pad>`, newline, end-of-frame."""
    return {"image": base_vocab, "pad": base_vocab + 1, "newline": base_vocab + 2, "frame_end": base_vocab + 3,
            "vocab": base_vocab + 64}


def write_released_checkpoint(folder: Path, smollm2_dir: Path) -> dict:
    """Write a tiny checkpoint in the released layout; return its ids and original tensors."""
    from tokenizers import AddedToken

    folder.mkdir(parents=True)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    ids = released_ids(len(tokenizer))
    tokenizer.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    assert tokenizer.convert_tokens_to_ids(["<image>", "<pad>"]) == [ids["image"], ids["pad"]]
    tokenizer.save_pretrained(folder)

    vision = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=16,
                  hidden_act="quick_gelu")
    text = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=64, intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=ids["vocab"],
                max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0, pad_token_id=ids["pad"],
                tie_word_embeddings=False)
    torch.manual_seed(0)
    clip = CLIPVisionModel(CLIPVisionConfig(**vision))
    llm = LlamaForCausalLM(LlamaConfig(**text))
    with torch.no_grad():  # distinct newline / end-of-frame rows, far from the random init scale
        llm.get_input_embeddings().weight[ids["newline"]].fill_(0.5)
        llm.get_input_embeddings().weight[ids["frame_end"]].fill_(-0.5)
    # The release's transformers 4.44 CLIPVisionModel nests the tower under `vision_model.`; 5.x has no such level.
    tensors = {f"vision_tower.vision_model.{k}": v for k, v in clip.state_dict().items()}
    # Older transformers saved CLIP's position ids with the weights; the converter drops them.
    tensors["vision_tower.vision_model.embeddings.position_ids"] = torch.arange(5).unsqueeze(0)
    tensors["multi_modal_projector.linear_1.weight"] = torch.randn(64, 32) * 0.1
    tensors["multi_modal_projector.linear_1.bias"] = torch.randn(64) * 0.1
    tensors["multi_modal_projector.linear_2.weight"] = torch.randn(64, 64) * 0.1
    tensors["multi_modal_projector.linear_2.bias"] = torch.randn(64) * 0.1
    tensors.update({f"language_model.{k}": v for k, v in llm.state_dict().items()})
    tensors = {k: v.contiguous().clone() for k, v in tensors.items()}

    # Three shards, split across module boundaries the way big checkpoints are.
    shards = [[k for k in tensors if k.startswith("vision_tower.")],
              [k for k in tensors if k.startswith(("multi_modal_projector.", "language_model.model.embed",
                                                   "language_model.model.layers.0."))]]
    shards.append([k for k in tensors if not any(k in s for s in shards)])
    write_released_layout(folder, tensors, shards, ids, vision, text)
    (folder / "README.md").write_text("---\nlicense: llama2\n---\n# Tarsier tiny\n")
    return {"ids": ids, "tensors": tensors, "vision": vision, "text": text}


def load_tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            out.update({k: handle.get_tensor(k) for k in handle.keys()})
    return out


def folder_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tarsier_hf.hub.convert", *args], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=300)


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("convert")


@pytest.fixture(scope="module")
def release(workdir, smollm2_dir) -> dict:
    info = write_released_checkpoint(workdir / "released", smollm2_dir)
    info["path"] = workdir / "released"
    return info


@pytest.fixture(scope="module")
def converted(release, workdir) -> Path:
    """The released checkpoint converted through the command line (yi = Tarsier-34b's chat format, whose
    `<|endoftext|>` separator the SmolLM2 tokenizer has; its eos is `<|im_end|>`)."""
    out = workdir / "converted"
    result = run_cli("--input", str(release["path"]), "--output", str(out), "--chat_template", "yi")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def video_frames() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(2, 40, 60, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------------------------- reference


def reference_forward(release: dict, prompt_ids: list[int], pixel_values: torch.Tensor):
    """Input embeddings and logits from the published description, on the original tensors.

    Args:
        prompt_ids: released-style token ids: one `image_token_index` per frame.
        pixel_values: `(frames, 3, S, S)`.

    Returns:
        `(embeddings (L, hidden), logits (L, vocab))`.
    """
    tensors, ids = release["tensors"], release["ids"]
    clip = CLIPVisionModel(CLIPVisionConfig(**release["vision"])).eval()
    clip.load_state_dict({k[len("vision_tower.vision_model."):]: v for k, v in tensors.items()
                          if k.startswith("vision_tower.") and not k.endswith("position_ids")})
    llm = LlamaForCausalLM(LlamaConfig(**release["text"])).eval()
    llm.load_state_dict({k[len("language_model."):]: v for k, v in tensors.items() if k.startswith("language_model.")})
    with torch.no_grad():
        patches = clip(pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]  # layer -2, no CLS
        projected = F.linear(F.gelu(F.linear(patches, tensors["multi_modal_projector.linear_1.weight"],
                                             tensors["multi_modal_projector.linear_1.bias"])),
                             tensors["multi_modal_projector.linear_2.weight"],
                             tensors["multi_modal_projector.linear_2.bias"])
        table = llm.get_input_embeddings().weight
        rows = cols = IMAGE_SIZE // PATCH
        pieces, frame = [], 0
        for token in prompt_ids:
            if token != ids["image"]:
                pieces.append(table[token][None])
                continue
            for r in range(rows):
                pieces.append(projected[frame, r * cols:(r + 1) * cols])
                pieces.append(table[ids["newline"]][None])
            pieces.append(table[ids["frame_end"]][None])
            frame += 1
        embeddings = torch.cat(pieces)
        logits = llm(inputs_embeds=embeddings[None]).logits[0]
    return embeddings, logits


def released_prompt(num_frames: int) -> str:
    """tools/conversation.py of the release: `USER: <image>*n\\n{text} ASSISTANT: ` (trailing space)."""
    return "USER: " + "<image>" * num_frames + "\n" + PROMPT + " ASSISTANT: "


# ----------------------------------------------------------------------------------------------- tests


def test_converted_model_matches_reference_forward(release, converted, video_frames):
    from modeling_tarsier import TarsierForConditionalGeneration
    from processing_tarsier import TarsierProcessor

    ids = release["ids"]
    processor = TarsierProcessor.from_pretrained(converted)
    assert (processor.image_token_id, processor.image_newline_token_id, processor.frame_end_token_id) == (
        ids["image"], ids["newline"], ids["frame_end"])
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": PROMPT}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "USER: <video>\n" + PROMPT + " ASSISTANT: "
    # A finished turn ends with Tarsier-34b's separator, not this tokenizer's eos (<|im_end|>).
    answered = messages + [{"role": "assistant", "content": [{"type": "text", "text": "A cat."}]}]
    assert processor.apply_chat_template(answered, tokenize=False).endswith(" ASSISTANT: A cat.<|endoftext|>")
    inputs = processor(text=text, videos=[video_frames], num_frames=2)

    # The token layout equals the release's: every <image> id becomes ([img]*2 + [newline])*2 + [frame_end].
    released_tokenizer = AutoTokenizer.from_pretrained(release["path"])
    prompt_ids = released_tokenizer(released_prompt(2)).input_ids
    frame = ([ids["image"]] * 2 + [ids["newline"]]) * 2 + [ids["frame_end"]]
    expanded = [t for token in prompt_ids for t in (frame if token == ids["image"] else [token])]
    assert inputs["input_ids"][0].tolist() == expanded

    model = TarsierForConditionalGeneration.from_pretrained(converted).eval()
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    ref_embeddings, ref_logits = reference_forward(release, prompt_ids, inputs["pixel_values"])
    torch.testing.assert_close(out.hidden_states[0][0], ref_embeddings, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.logits[0], ref_logits, rtol=1e-5, atol=1e-5)
    # The separators really are the released rows, not zeros or projected features.
    newline_positions = (inputs["input_ids"][0] == ids["newline"]).nonzero().flatten()
    assert torch.equal(out.hidden_states[0][0, newline_positions], torch.full((4, 64), 0.5))


def test_converted_folder_contents(release, converted):
    from processing_tarsier import TarsierProcessor

    files = {p.name for p in converted.iterdir()}
    assert {"config.json", "model.safetensors.index.json", "model-00001-of-00003.safetensors",
            "model-00003-of-00003.safetensors", "generation_config.json", "processor_config.json",
            "chat_template.jinja", "tokenizer.json", "tokenizer_config.json", "README.md",
            *CODE_FILES} <= files
    config = json.loads((converted / "config.json").read_text())
    ids = release["ids"]
    assert config["model_type"] == "tarsier"
    assert (config["image_token_id"], config["image_newline_token_id"], config["frame_end_token_id"]) == (
        ids["image"], ids["newline"], ids["frame_end"])
    assert config["video_token_id"] == ids["frame_end"] + 1  # first free row after the released ones
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_tarsier.TarsierForConditionalGeneration"
    tensors = load_tensors(converted)
    original = release["tensors"]
    assert "model.vision_tower.embeddings.position_ids" not in tensors
    assert torch.equal(tensors["lm_head.weight"], original["language_model.lm_head.weight"])
    assert torch.equal(tensors["model.language_model.embed_tokens.weight"],
                       original["language_model.model.embed_tokens.weight"])
    assert len(tensors) == len(original) - 1
    generation = json.loads((converted / "generation_config.json").read_text())
    tokenizer = TarsierProcessor.from_pretrained(converted).tokenizer
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") in generation["eos_token_id"]  # Yi separator stops
    card = (converted / "README.md").read_text()
    assert ModelCard(card).data.license == "llama2" and "7 LM positions" in card  # the released card's license
    for name in CODE_FILES:
        assert (converted / name).read_bytes() == (REPO / name).read_bytes()


def test_export_then_convert_is_bit_identical(release, converted, workdir):
    exported = export_released(converted, workdir / "exported")
    # The export is the released layout again: same tensor names and bytes (minus the rebuilt buffer) ...
    original = {k: v for k, v in release["tensors"].items() if not k.endswith("position_ids")}
    exported_tensors = load_tensors(exported)
    assert sorted(exported_tensors) == sorted(original)
    for name, tensor in original.items():
        assert exported_tensors[name].dtype == tensor.dtype and torch.equal(exported_tensors[name], tensor), name
    # ... and the same released config fields that the release code and vLLM read.
    released_config = json.loads((release["path"] / "config.json").read_text())
    exported_config = json.loads((exported / "config.json").read_text())
    for key in ("architectures", "model_type", "image_token_index", "image_newline_idx", "image_new_idx",
                "vision_feature_layer", "vision_feature_select_strategy", "projector_hidden_act", "vocab_size"):
        assert exported_config[key] == released_config[key], key
    for sub in ("vision_config", "text_config"):
        for key, value in released_config[sub].items():
            assert exported_config[sub][key] == value, (sub, key)
    processor_config = json.loads((exported / "processor_config.json").read_text())
    assert processor_config["num_additional_image_tokens"] == 1 and processor_config["patch_size"] == PATCH
    tokenizer_config = json.loads((exported / "tokenizer_config.json").read_text())
    assert "auto_map" not in tokenizer_config and tokenizer_config["processor_class"] == "LlavaProcessor"
    assert not any(exported.glob("*.py"))
    from transformers import LlavaConfig  # what vLLM parses the released config with

    llava = LlavaConfig.from_pretrained(exported)
    assert (llava.image_token_id, llava.image_newline_idx, llava.image_new_idx) == (
        released_config["image_token_index"], released_config["image_newline_idx"], released_config["image_new_idx"])

    # export -> convert reproduces the converted folder byte for byte (weights, index, config, tokenizer, ...).
    again = workdir / "reconverted"
    convert_released(exported, again, chat_template="yi")
    assert folder_digest(again) == folder_digest(converted)


@pytest.mark.slow
def test_converted_folder_loads_in_fresh_process_and_generates(converted, demo_video, workdir):
    from modeling_tarsier import TarsierForConditionalGeneration
    from processing_tarsier import TarsierProcessor

    messages = [{"role": "user", "content": [{"type": "video", "path": str(demo_video)},
                                             {"type": "text", "text": PROMPT}]}]
    script = textwrap.dedent(f"""
        import importlib.abc, json, sys
        class Block(importlib.abc.MetaPathFinder):  # the repo's own modules must not be importable here
            def find_spec(self, name, path=None, target=None):
                if name in ("configuration_tarsier", "modeling_tarsier", "processing_tarsier", "tarsier_hf"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor
        folder = {str(converted)!r}
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        base = AutoModel.from_pretrained(folder, trust_remote_code=True)
        model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
        inputs = processor.apply_chat_template({messages!r}, add_generation_prompt=True, tokenize=True,
                                               return_dict=True, processor_kwargs={{"num_frames": 2}})
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        print(json.dumps({{"base": type(base).__name__, "model": type(model).__module__,
                          "input": inputs["input_ids"][0].tolist(), "output": out[0].tolist()}}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(workdir / "modules"))
    cwd = workdir / "elsewhere"
    cwd.mkdir(exist_ok=True)
    result = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    fresh = json.loads(result.stdout.strip().splitlines()[-1])
    assert fresh["base"] == "TarsierModel" and fresh["model"].startswith("transformers_modules.")
    assert len(fresh["output"]) == len(fresh["input"]) + 4

    # Same inputs and greedy tokens as the repository's classes in this process (real PyAV decoding in both).
    processor = TarsierProcessor.from_pretrained(converted)
    model = TarsierForConditionalGeneration.from_pretrained(converted).eval()
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           processor_kwargs={"num_frames": 2})
    assert inputs["input_ids"][0].tolist() == fresh["input"]
    assert model.generate(**inputs, max_new_tokens=4, do_sample=False)[0].tolist() == fresh["output"]


def test_hub_publish_prepares_exactly_the_upload_folder(converted, workdir):
    (converted / "__pycache__").mkdir(exist_ok=True)
    (converted / "__pycache__" / "x.pyc").write_bytes(b"junk")
    (converted / ".DS_Store").write_bytes(b"junk")
    staging = hub_publish.prepare_upload_folder(converted, workdir / "upload")
    expected = {p.name for p in converted.iterdir() if p.is_file() and p.name != ".DS_Store"}
    assert {p.name for p in staging.iterdir()} == expected
    assert folder_digest(staging) == {k: v for k, v in folder_digest(converted).items() if k != ".DS_Store"}
    assert hub_publish.main(["--folder", str(converted), "--repo_id", "someone/tarsier-tiny", "--dry_run",
                             "--staging_dir", str(workdir / "upload2")]) == 0
    assert sorted(p.name for p in (workdir / "upload2").iterdir()) == sorted(expected)
    plan = hub_publish.push_to_hub(converted, "someone/tarsier-tiny", staging_dir=workdir / "upload4", dry_run=True)
    assert plan.repo_id == "someone/tarsier-tiny" and sorted(plan.files) == sorted(expected)
    assert plan.commit_url is None and plan.folder == workdir / "upload4"
    with pytest.raises(ValueError, match="namespace/name"):
        hub_publish.push_to_hub(converted, "no-namespace", dry_run=True)

    # A folder with a shard missing is refused before anything is uploaded.
    broken = workdir / "broken"
    broken.mkdir()
    for name in expected - {"model-00002-of-00003.safetensors"}:
        (broken / name).write_bytes((converted / name).read_bytes())
    with pytest.raises(CheckpointError, match="model-00002-of-00003.safetensors"):
        hub_publish.prepare_upload_folder(broken, workdir / "upload3")


def test_streaming_memory_stays_near_one_shard(tmp_path):
    """8 shards of 16 MiB convert with a peak RSS growth far below the 128 MiB a whole-checkpoint load needs
    (measured: about one shard; holding every shard before writing grows by about the whole checkpoint)."""
    shard_mib, count = 16, 8
    source = tmp_path / "big"
    source.mkdir()
    weight_map = {}
    for number in range(1, count + 1):
        name = f"model-{number:05d}-of-{count:05d}.safetensors"
        tensors = {f"language_model.model.layers.{number}.w{j}": torch.full((shard_mib * 2**20 // 16,), float(j))
                   for j in range(4)}
        save_file(tensors, str(source / name))
        weight_map.update({k: name for k in tensors})
    (source / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))

    def rss_kib(field: str) -> int:
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))

    (tmp_path / "out").mkdir()
    shards = list_shards(source)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    before = rss_kib("VmRSS")
    stream_shards(shards, tmp_path / "out", released_to_ours, "streaming")
    growth = (rss_kib("VmHWM") - before) / 1024
    assert growth < count * shard_mib / 2, f"peak RSS grew by {growth:.0f} MiB"
    assert len(list((tmp_path / "out").glob("*.safetensors"))) == count


def test_full_size_7b_names_and_shapes_fit():
    """The released Tarsier-7b tensor names/shapes (CLIP ViT-L/14-336 + Vicuna-7B, vocab 32,064), built on the
    meta device, map onto our model exactly: 601 positions per frame, nothing missing, nothing left over."""
    vision = dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                  num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768)
    text = dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096)
    released = {"model_type": "llava", "architectures": ["TarsierForConditionalGeneration"],
                "vision_config": vision, "text_config": text}  # ids: the release's LlavaConfig defaults
    with torch.device("meta"):
        clip = CLIPVisionModel(CLIPVisionConfig(**vision))
        llm = LlamaForCausalLM(LlamaConfig(**text))
    shapes = {f"vision_tower.vision_model.{k}": tuple(v.shape) for k, v in clip.state_dict().items()}
    shapes.update({f"language_model.{k}": tuple(v.shape) for k, v in llm.state_dict().items()})
    projector = {"linear_1.weight": (4096, 1024), "linear_1.bias": (4096,), "linear_2.weight": (4096, 4096),
                 "linear_2.bias": (4096,)}
    shapes.update({f"multi_modal_projector.{k}": v for k, v in projector.items()})
    config = tarsier_config_from_released(released, video_token_id=32004)
    assert (config.image_token_id, config.image_newline_token_id, config.frame_end_token_id) == (32000, 32002, 32003)
    assert config.num_positions_per_frame == 601
    check_weights_fit(config, {released_to_ours(k): v for k, v in shapes.items()}, "tarsier-7b")
    assert released_config_from_tarsier(config)["image_new_idx"] == 32003


def test_special_token_rows_are_named_in_place(release):
    """A tokenizer with only <image> after its base vocabulary: <video> fills the next row, an unused
    placeholder the row before the newline row, and the newline / end-of-frame tokens land on their rows."""
    from transformers import AutoTokenizer as Tok

    tokenizer = Tok.from_pretrained(release["path"])  # base vocabulary, then <image>, <pad>
    base = release["ids"]["image"]
    ids = map_special_tokens(tokenizer, base, base + 3, base + 4, base + 64)
    assert (ids["<image>"], ids["<image_newline>"], ids["<frame_end>"]) == (base, base + 3, base + 4)
    assert ids["<video>"] == base + 2 and ids["placeholders"] == []
    assert tokenizer.convert_ids_to_tokens([base + 3, base + 4]) == ["<image_newline>", "<frame_end>"]
    assert tokenizer("a<frame_end>b").input_ids.count(base + 4) == 1

    again = Tok.from_pretrained(release["path"])
    ids = map_special_tokens(again, base, base + 5, base + 6, base + 64)
    assert ids["<video>"] == base + 2 and ids["placeholders"] == [f"<tarsier_unused_{base + 3}>",
                                                                   f"<tarsier_unused_{base + 4}>"]
    with pytest.raises(CheckpointError, match=f"needs {base + 5} ids .* embedding table has {base + 4} rows"):
        map_special_tokens(Tok.from_pretrained(release["path"]), base, base + 2, base + 3, base + 4)
    with pytest.raises(CheckpointError, match=f"image_new_idx={base + 4} is outside the embedding table"):
        map_special_tokens(Tok.from_pretrained(release["path"]), base, base + 3, base + 4, base + 4)


# ----------------------------------------------------------------------------------------------- bad input


def test_bad_inputs_give_clear_errors(release, converted, tmp_path):
    def copy_release(name: str) -> Path:
        """The release with every file linked (files a case rewrites are replaced, never written through)."""
        folder = tmp_path / name
        folder.mkdir()
        for path in release["path"].iterdir():
            (folder / path.name).symlink_to(path)
        return folder

    def rewrite(path: Path, text: str) -> None:
        path.unlink()
        path.write_text(text)

    wrong_type = copy_release("wrong_type")
    config = json.loads((wrong_type / "config.json").read_text())
    rewrite(wrong_type / "config.json", json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(CheckpointError, match=r"config.json: model_type is 'llama'"):
        convert_released(wrong_type, tmp_path / "out1")

    # A newline row that is the <image> row itself (an ordinary token row is accepted: test_release_parity.py).
    clash = copy_release("clash")
    rewrite(clash / "config.json", json.dumps({**config, "image_newline_idx": config["image_token_index"]}))
    with pytest.raises(CheckpointError, match="image_newline_idx=.* is the <image> row"):
        convert_released(clash, tmp_path / "out2", chat_template="yi")

    # A tensor outside the released prefixes is named with its shard.
    extra = copy_release("extra")
    (extra / "model-00003-of-00003.safetensors").unlink()
    save_file({"mystery.weight": torch.zeros(1)}, str(extra / "model-00003-of-00003.safetensors"))
    with pytest.raises(CheckpointError, match=r"model-00003-of-00003.safetensors: tensor 'mystery.weight'"):
        convert_released(extra, tmp_path / "out3", chat_template="yi")

    # Weights that do not fit the config (vocab mismatch) are refused before anything is written.
    small_vocab = copy_release("small_vocab")
    text = {**config["text_config"], "vocab_size": config["text_config"]["vocab_size"] - 8}
    rewrite(small_vocab / "config.json", json.dumps({**config, "text_config": text, "vocab_size": text["vocab_size"]}))
    with pytest.raises(CheckpointError, match="shape mismatches .*embed_tokens"):
        convert_released(small_vocab, tmp_path / "out4", chat_template="yi")
    assert not (tmp_path / "out4").exists()

    # The chat format is read from the tokenizer: Vicuna's </s>, Yi's <|startoftext|>/<|endoftext|>, else ask.
    from types import SimpleNamespace

    assert detect_chat_format(SimpleNamespace(eos_token="</s>", bos_token="<s>")) == "vicuna"
    assert detect_chat_format(SimpleNamespace(eos_token="<|endoftext|>", bos_token="<|startoftext|>")) == "yi"
    with pytest.raises(CheckpointError, match="pass --chat_template vicuna or yi"):
        convert_released(release["path"], tmp_path / "out6")  # SmolLM2: eos <|im_end|>

    # Exporting a folder that is already in the released layout, and a non-empty output folder.
    with pytest.raises(CheckpointError, match="expected 'tarsier'"):
        export_released(release["path"], tmp_path / "out5")
    with pytest.raises(SystemExit, match=r"error: .*not empty \(pass --overwrite\)"):
        convert_main(["--input", str(release["path"]), "--output", str(converted), "--chat_template", "yi"])
