"""Released Tarsier2 checkpoints -> standard Qwen2-VL folders and back (tarsier_hf/hub/convert/tarsier2.py, `tarsier-convert`).

The released layout comes from `tests/tarsier2_release.py` (facts of bytedance/tarsier branch `tarsier2` and vLLM's
Tarsier2 reader, with sources): a tiny random Qwen2-VL of transformers' own classes, saved under the release's
names, with a SmolLM2 tokenizer carrying Qwen2-VL's special tokens at ids other than Qwen2-VL's.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForImageTextToText, AutoTokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration

from tarsier_hf.hub.convert import tarsier2
from tarsier_hf.hub.convert.__main__ import main as convert_main
from tarsier_hf.hub.convert.tarsier2_processor import PROBE_CONVERSATIONS, read_pixel_bounds
from tarsier_hf.hub.convert.tarsier_layout import read_released_config
from tarsier_hf.hub.checkpoint import CheckpointError
from tests.conftest import console_script
from tests.tarsier2_release import RELEASED_CHAT_TEMPLATE, reference_model, write_released_tarsier2

PATCH_DIM = 3 * 2 * 14 * 14  # channels * temporal_patch_size * patch_size**2 of the tiny vision tower


@pytest.fixture(scope="module")
def converted(released_tarsier2, tmp_path_factory) -> Path:
    return tarsier2.convert_released_tarsier2(released_tarsier2["path"], tmp_path_factory.mktemp("t2") / "hf")


def tensors_of(folder: Path) -> dict[str, tuple[str, torch.Tensor]]:
    """name -> (shard file name, tensor) of every tensor in a folder's shards."""
    found = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            found.update({name: (shard.name, handle.get_tensor(name)) for name in handle.keys()})
    return found


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def vision_inputs(facts: dict, kind: str, grid: tuple[int, int, int], seed: int = 0) -> dict:
    """Model inputs of `<|im_start|>user\\n<vision run>Describe.<|im_end|>\\n<|im_start|>assistant\\n` with random
    patches of a `grid` (t, h, w in patches): `kind` "image" fills the run with `<|image_pad|>` and passes
    `pixel_values` / `image_grid_thw` (the release's form, also for a video's frames), "video" with `<|video_pad|>`
    and `pixel_values_videos` / `video_grid_thw` (standard Qwen2-VL)."""
    tokenizer = AutoTokenizer.from_pretrained(facts["path"])
    t, h, w = grid
    pad = "<|image_pad|>" if kind == "image" else "<|video_pad|>"
    text = (f"<|im_start|>user\n<|vision_start|>{pad * (t * h * w // 4)}<|vision_end|>Describe.<|im_end|>\n"
            "<|im_start|>assistant\n")
    input_ids = tokenizer(text, return_tensors="pt").input_ids
    token_types = torch.zeros_like(input_ids)
    token_types[input_ids == tokenizer.convert_tokens_to_ids(pad)] = 1 if kind == "image" else 2
    patches = torch.randn(t * h * w, PATCH_DIM, generator=torch.Generator().manual_seed(seed))
    grid_thw = torch.tensor([grid])
    if kind == "image":
        return dict(input_ids=input_ids, mm_token_type_ids=token_types, pixel_values=patches, image_grid_thw=grid_thw)
    return dict(input_ids=input_ids, mm_token_type_ids=token_types, pixel_values_videos=patches,
                video_grid_thw=grid_thw)


# ----------------------------------------------------------------------------------------------- the converted folder


def test_converted_folder_is_standard_qwen2vl(released_tarsier2, converted):
    """config.json is a transformers 5.x Qwen2-VL config with the checkpoint's ids and no attention request; the
    tensors are the released ones, byte for byte, under transformers' names, in the same shard partition."""
    config = json.loads((converted / "config.json").read_text())
    assert config["model_type"] == "qwen2_vl" and config["architectures"] == ["Qwen2VLForConditionalGeneration"]
    assert config["text_config"]["model_type"] == "qwen2_vl_text"
    assert config["vision_config"]["model_type"] == "qwen2_vl_vision"
    for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        assert config[key] == released_tarsier2[key]
    assert config["text_config"]["vocab_size"] == released_tarsier2["vocab_size"]
    assert config["text_config"]["rope_parameters"]["mrope_section"] == [2, 3, 3]
    text = json.dumps(config)
    assert "attn_implementation" not in text and "flash_attention" not in text

    tensors = tensors_of(converted)
    assert sorted(tensors) == sorted(released_tarsier2["state_dict"])
    for name, (_, tensor) in tensors.items():
        original = released_tarsier2["state_dict"][name]
        assert tensor.dtype == original.dtype == torch.bfloat16
        assert torch.equal(tensor.view(torch.int16), original.view(torch.int16)), name
    released_shards = {released_tarsier2["path"] / name: keys for name, keys in released_tarsier2["shards"].items()}
    assert [len(keys) for keys in released_shards.values()] == [
        sum(1 for shard, _ in tensors.values() if shard == name) for name in released_tarsier2["shards"]]

    files = sorted(path.name for path in converted.iterdir())
    assert {"config.json", "model.safetensors.index.json", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "chat_template.jinja", "processor_config.json",
            "processing_tarsier2.py", "video_processing_tarsier2.py", "frame_sampling_tarsier.py",
            "media_loading_tarsier.py", "video_reader_tarsier.py", "media_limits_tarsier.py"} <= set(files)
    assert (converted / "generation_config.json").read_bytes() == (
        released_tarsier2["path"] / "generation_config.json").read_bytes()


def auto_maps(value, path=""):
    """`(path, auto_map)` of every `auto_map` in a JSON value."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "auto_map":
                yield path or "<top>", item
            yield from auto_maps(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for item in value:
            yield from auto_maps(item, path)


def test_converted_processor_files(released_tarsier2, converted):
    """The processor: a plain Qwen2-VL processor config (`processor_class` Qwen2VLProcessor, transformers' Qwen2-VL
    image and video processor configs with the checkpoint's min / max pixels) whose only `auto_map` is the top-level
    one naming Tarsier2Processor for AutoProcessor (a nested one would make a plain loader ask for remote code);
    the release's video options in the video config's `tarsier2` block; the checkpoint's tokenizer (same ids, no
    `auto_map`) and a ChatML template that renders what the released template renders, a video's run as
    `<|video_pad|>`."""
    processor = json.loads((converted / "processor_config.json").read_text())
    assert processor["processor_class"] == "Qwen2VLProcessor"
    assert list(auto_maps(processor)) == [("<top>", {"AutoProcessor": "processing_tarsier2.Tarsier2Processor"})]
    bounds = {"shortest_edge": released_tarsier2["min_pixels"], "longest_edge": released_tarsier2["max_pixels"]}
    assert processor["image_processor"]["image_processor_type"] == "Qwen2VLImageProcessor"
    assert processor["image_processor"]["size"] == processor["video_processor"]["size"] == bounds
    assert processor["video_processor"]["video_processor_type"] == "Qwen2VLVideoProcessor"
    assert processor["video_processor"]["tarsier2"] == {
        "frame_sampling": {"policy": "tarsier2", "num_frames": 16}, "do_sample_frames": True, "duplicate_frames": True,
        "frame_pre_resize_max_pixels": 460800, "frame_pre_resize_min_pixels": 0,
        "max_pixels_per_sample": 128 * 384 * 384}
    tokenizer_config = json.loads((converted / "tokenizer_config.json").read_text())
    assert list(auto_maps(tokenizer_config)) == [] and tokenizer_config["processor_class"] == "Qwen2VLProcessor"
    assert not (converted / "preprocessor_config.json").exists()
    assert read_pixel_bounds(converted) == (released_tarsier2["min_pixels"], released_tarsier2["max_pixels"])

    tokenizer = AutoTokenizer.from_pretrained(converted)
    original = AutoTokenizer.from_pretrained(released_tarsier2["path"])
    sample = "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>A red ball rolls.<|im_end|>"
    assert tokenizer(sample).input_ids == original(sample).input_ids
    assert tokenizer.convert_tokens_to_ids("<|video_pad|>") == released_tarsier2["video_token_id"]

    messages = [{"role": "user", "content": [{"type": "video", "num_vision_tokens": 3},
                                             {"type": "text", "text": "Describe the video."}]}]
    ours = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    theirs = original.apply_chat_template(messages, chat_template=RELEASED_CHAT_TEMPLATE, tokenize=False,
                                          add_generation_prompt=True)
    assert ours == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|><|video_pad|><|vision_end|>Describe the video.<|im_end|>\n<|im_start|>assistant\n")
    assert theirs == ours.replace("<|video_pad|>", "<|image_pad|>" * 3)

    answer = [{"role": "user", "content": [{"type": "text", "text": "Describe."}]},
              {"role": "assistant", "content": [{"type": "text", "text": "A red ball rolls."}]}]
    encoded = tokenizer.apply_chat_template(answer, return_assistant_tokens_mask=True, return_dict=True)
    marked = [token for token, mask in zip(encoded["input_ids"], encoded["assistant_masks"]) if mask]
    assert tokenizer.decode(marked) == "A red ball rolls.<|im_end|>"  # the end of turn is trained: the model stops


def test_template_kept_in_tokenizer_config(released_tarsier2, tmp_path):
    """A release whose template lives in tokenizer_config.json (where transformers 4.47 tokenizers save theirs)
    converts to the same ChatML template, and the converted tokenizer carries no other."""
    folder = shutil.copytree(released_tarsier2["path"], tmp_path / "released")
    (folder / "chat_template.json").unlink()
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config["chat_template"] = RELEASED_CHAT_TEMPLATE
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    output = tarsier2.convert_released_tarsier2(folder, tmp_path / "hf")
    assert "chat_template" not in json.loads((output / "tokenizer_config.json").read_text())
    template = (output / "chat_template.jinja").read_text()
    assert "<|video_pad|>" in template and AutoTokenizer.from_pretrained(output).chat_template == template


def test_loads_without_remote_code_and_matches_qwen2vl(released_tarsier2, converted):
    """transformers' own classes load the folder (no trust_remote_code, no flash-attn) and give the logits of
    transformers' Qwen2-VL holding the same weights, on text with an image and with a video, in the checkpoint's
    bfloat16 and in float32."""
    auto = AutoModelForImageTextToText.from_pretrained(converted).eval()
    assert type(auto) is Qwen2VLForConditionalGeneration and auto.dtype == torch.bfloat16
    assert auto.config._attn_implementation != "flash_attention_2"
    differences = {}
    with torch.no_grad():
        for dtype in (torch.bfloat16, torch.float32):
            reference = reference_model(released_tarsier2, dtype)
            models = {cls.__name__: cls.from_pretrained(converted, dtype=dtype)
                      for cls in (AutoModelForImageTextToText, Qwen2VLForConditionalGeneration)}
            for kind in ("image", "video"):
                inputs = vision_inputs(released_tarsier2, kind, (2, 4, 4))
                expected = reference(**inputs).logits
                for name, model in models.items():
                    logits = model.eval()(**inputs).logits
                    differences[f"{name}, {str(dtype)[6:]}, {kind}"] = (logits - expected).abs().max().item()
    print("max abs logit difference:", differences)
    assert all(value == 0.0 for value in differences.values()), differences


def test_video_as_image_run_equals_video_run(released_tarsier2):
    """The release feeds a video as one `<|image_pad|>` run with `image_grid_thw`; the converted folder's prompts
    give it one `<|video_pad|>` run with `video_grid_thw`: transformers' Qwen2-VL gives both the same logits."""
    model = reference_model(released_tarsier2)
    with torch.no_grad():
        as_image = model(**vision_inputs(released_tarsier2, "image", (4, 4, 4))).logits
        as_video = model(**vision_inputs(released_tarsier2, "video", (4, 4, 4))).logits
    difference = (as_image - as_video).abs().max().item()
    print("max abs logit difference, video as image run vs video run (float32):", difference)
    assert difference == 0.0


def test_mrope_after_long_videos_differs_from_release(released_tarsier2):
    """A fact of transformers 5.23, not of the converter: after a vision run, `get_rope_index` resumes text at
    `start + max(h, w) / merge`, while the release (its `get_rope_index`, transformers 4.47's rule) resumes at the
    run's largest position + 1, i.e. `start + max(t, h / merge, w / merge)`. They agree while `t` is at most the
    larger merged side, and differ beyond it. Measured once with transformers 4.47 (the release's version, not
    installable here) on this checkpoint's export: logits within 3e-7 of 5.23's for grids (2, 4, 8) and (2, 4, 4),
    4.3e-3 / 2.4e-3 apart after the run for (4, 4, 4) / (8, 4, 4)."""
    model = reference_model(released_tarsier2)

    def text_start_after_run(grid):
        inputs = vision_inputs(released_tarsier2, "image", grid)
        positions, _ = model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                                  image_grid_thw=inputs["image_grid_thw"])
        return int(positions[0, 0, (inputs["input_ids"][0] == released_tarsier2["vision_end_token_id"]).nonzero()])

    for t, h, w in ((2, 4, 8), (4, 4, 4), (8, 4, 4)):
        start = 4  # 3 text tokens + <|vision_start|>
        release_rule = start + max(t, h // 2, w // 2)
        assert (text_start_after_run((t, h, w)) == release_rule) == (t <= max(h, w) // 2), (t, h, w)


# ----------------------------------------------------------------------------------------------- round trip


def contains(outer: dict, inner: dict) -> bool:
    """Every key of `inner` is in `outer` with the same value (nested objects compared the same way)."""
    return all(key in outer and (contains(outer[key], value) if isinstance(value, dict) and
                                 isinstance(outer[key], dict) else outer[key] == value)
               for key, value in inner.items())


def test_export_round_trip(released_tarsier2, converted, tmp_path):
    """export writes the released layout back (the released config.json with every key and value, the same tensors
    byte for byte under the released names and shards, the release's template form); without the kept released
    config it rebuilds the config facts, flash-attention request included; converting the export again reproduces
    the converted folder's shards byte for byte."""
    original = released_tarsier2["config"]
    assert json.loads((converted / tarsier2.RELEASED_CONFIG_FILE).read_text()) == original
    exported = tarsier2.export_released_tarsier2(converted, tmp_path / "released")
    config = json.loads((exported / "config.json").read_text())
    assert contains(config, original)

    bare = shutil.copytree(converted, tmp_path / "bare")
    (bare / tarsier2.RELEASED_CONFIG_FILE).unlink()
    rebuilt = json.loads((tarsier2.export_released_tarsier2(bare, tmp_path / "rebuilt") / "config.json").read_text())
    assert rebuilt["model_type"] == "llava" and rebuilt["architectures"] == ["TarsierForConditionalGeneration"]
    assert rebuilt["image_token_index"] == original["image_token_index"]
    assert rebuilt["projection_head"] is None and rebuilt["torch_dtype"] == "bfloat16"
    facts = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "rms_norm_eps", "rope_theta", "rope_scaling", "bos_token_id", "eos_token_id",
             "image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id", "vision_token_id",
             "spatial_merge_size", "attn_implementation", "model_type", "tie_word_embeddings")
    assert {k: rebuilt["text_config"][k] for k in facts} == {k: original["text_config"][k] for k in facts}
    for vision in (rebuilt["vision_config"], rebuilt["text_config"]["vision_config"]):
        assert contains(vision, original["vision_config"])

    back = tensors_of(exported)
    assert {name: shard for name, (shard, _) in back.items()} == {
        name: shard for shard, names in released_tarsier2["shards"].items() for name in names}
    for name, (_, tensor) in back.items():
        assert torch.equal(tensor.view(torch.int16), released_tarsier2["released_tensors"][name].view(torch.int16))

    preprocessor = json.loads((exported / "preprocessor_config.json").read_text())
    bounds = {"min_pixels": released_tarsier2["min_pixels"], "max_pixels": released_tarsier2["max_pixels"]}
    assert preprocessor["size"] == bounds and {k: preprocessor[k] for k in bounds} == bounds
    tokenizer_config = json.loads((exported / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "Qwen2Tokenizer" and "auto_map" not in tokenizer_config
    assert "<|video_pad|>" in tokenizer_config["additional_special_tokens"]
    tokenizer = AutoTokenizer.from_pretrained(exported)
    template = json.loads((exported / "chat_template.json").read_text())["chat_template"]
    for messages, add_generation_prompt in PROBE_CONVERSATIONS:
        assert tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=add_generation_prompt) == \
            tokenizer.apply_chat_template(messages, chat_template=RELEASED_CHAT_TEMPLATE, tokenize=False,
                                          add_generation_prompt=add_generation_prompt)

    again = tarsier2.convert_released_tarsier2(exported, tmp_path / "again")
    shards = sorted(p.name for p in converted.glob("*.safetensors"))
    assert shards == sorted(p.name for p in again.glob("*.safetensors"))
    assert all(digest(converted / name) == digest(again / name) for name in shards)
    assert json.loads((again / "config.json").read_text()) == json.loads((converted / "config.json").read_text())


# ----------------------------------------------------------------------------------------------- the release's code


@pytest.mark.parametrize("attn_key", ["attn_implementation", "_attn_implementation"])
def test_release_code_keys_are_dropped_and_restored(attn_key, tmp_path, released_tarsier2):
    """A config saved by the release's code asks for flash_attention_2 in its Qwen2-VL and vision configs
    (`attn_key`), and its vision config needs an `auto_map` for the release's `AutoModel.from_config` (the value
    here is made up: the released one is not readable). Read as is, transformers refuses to load the model without
    flash-attn; converted, the folder names neither and loads with sdpa; exported, both come back."""
    released = write_released_tarsier2(tmp_path / "released", attn_key=attn_key, num_shards=1,
                                       tokenizer_source=released_tarsier2["path"])
    config = json.loads((released["path"] / "config.json").read_text())
    assert config["text_config"][attn_key] == config["text_config"]["vision_config"][attn_key] == "flash_attention_2"
    auto_map = {"AutoConfig": "someone/tarsier2--modeling_vision.VisionConfig",
                "AutoModel": "someone/tarsier2--modeling_vision.VisionModel"}
    for vision in (config["vision_config"], config["text_config"]["vision_config"]):
        vision["auto_map"] = auto_map
    (released["path"] / "config.json").write_text(json.dumps(config))

    output = tarsier2.convert_released_tarsier2(released["path"], tmp_path / "hf")
    saved = (output / "config.json").read_text()
    assert "flash_attention" not in saved and "auto_map" not in saved
    model = Qwen2VLForConditionalGeneration.from_pretrained(output)
    assert model.config._attn_implementation == model.config.vision_config._attn_implementation == "sdpa"
    if importlib.util.find_spec("flash_attn") is None:
        with pytest.raises(ImportError, match="FlashAttention2"):
            as_saved = Qwen2VLConfig.from_dict(config["text_config"])
            Qwen2VLForConditionalGeneration.from_pretrained(output, config=as_saved)

    exported = json.loads((tarsier2.export_released_tarsier2(output, tmp_path / "back") / "config.json").read_text())
    for vision in (exported["vision_config"], exported["text_config"]["vision_config"]):
        assert vision["auto_map"] == auto_map and vision[attn_key] == "flash_attention_2"


# ----------------------------------------------------------------------------------------------- bad input


def copy_release(released_tarsier2: dict, folder: Path) -> Path:
    shutil.copytree(released_tarsier2["path"], folder)
    return folder


def edit_config(folder: Path, change) -> None:
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


def test_bad_inputs_name_the_file_and_cause(released_tarsier2, converted, tmp_path):
    def refused(folder: Path, match: str, export: bool = False) -> None:
        with pytest.raises(CheckpointError, match=match):
            tarsier2.run(folder, tmp_path / f"out-{folder.name}", export=export)
        assert not (tmp_path / f"out-{folder.name}").exists()

    missing = copy_release(released_tarsier2, tmp_path / "missing_shard")
    (missing / "model-00002-of-00003.safetensors").unlink()
    refused(missing, r"model.safetensors.index.json: lists shards that are missing.*model-00002-of-00003")

    qwen25 = copy_release(released_tarsier2, tmp_path / "qwen25")
    edit_config(qwen25, lambda c: c["text_config"].update(model_type="qwen2_5_vl"))
    assert tarsier2.handles(qwen25, export=False)
    refused(qwen25, r"config.json: text_config.model_type is 'qwen2_5_vl': a Qwen2.5-VL")

    unknown_vision = copy_release(released_tarsier2, tmp_path / "unknown_vision")
    edit_config(unknown_vision, lambda c: c["text_config"]["vision_config"].update(model_type="siglip_vision_model"))
    refused(unknown_vision, r"config.json: the vision config's model_type is 'siglip_vision_model'")

    invalid = copy_release(released_tarsier2, tmp_path / "invalid_text")
    edit_config(invalid, lambda c: c["text_config"].update(model_type="qwen2_vl", hidden_size="wide"))
    refused(invalid, r"config.json: text_config is not a valid Qwen2-VL config")

    wrong_index = copy_release(released_tarsier2, tmp_path / "wrong_index")
    edit_config(wrong_index, lambda c: c.update(image_token_index=5))
    refused(wrong_index, r"config.json: image_token_index=5 differs from text_config.image_token_id")

    wrong_token = copy_release(released_tarsier2, tmp_path / "wrong_token")
    edit_config(wrong_token, lambda c: c["text_config"].update(video_token_id=7))
    refused(wrong_token, r"config.json: video_token_id=7 but the tokenizer's <\|video_pad\|> is ")

    projector = copy_release(released_tarsier2, tmp_path / "projector")
    from safetensors.torch import load_file, save_file

    shard = projector / "model-00003-of-00003.safetensors"
    save_file({**load_file(str(shard)), "multi_modal_projector.linear_1.weight": torch.zeros(2)}, str(shard))
    refused(projector, r"model-00003-of-00003.safetensors: tensor 'multi_modal_projector.linear_1.weight' matches none")

    small = copy_release(released_tarsier2, tmp_path / "small_vocab")
    edit_config(small, lambda c: c["text_config"].update(vocab_size=released_tarsier2["vocab_size"] - 64))
    refused(small, r"the weights do not fit the Qwen2VLForConditionalGeneration config: shape mismatches .*embed_tokens")

    other_template = copy_release(released_tarsier2, tmp_path / "other_template")
    (other_template / "chat_template.json").write_text(json.dumps(
        {"chat_template": "{% for m in messages %}USER: {{ m['content'][-1]['text'] }} {% endfor %}ASSISTANT:"}))
    refused(other_template, r"chat_template.json: the chat template renders 'USER: .* Qwen2-VL's ChatML renders")

    broken_tokenizer = copy_release(released_tarsier2, tmp_path / "broken_tokenizer")
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        if (broken_tokenizer / name).is_file():
            (broken_tokenizer / name).write_text("{")
    refused(broken_tokenizer, r"broken_tokenizer: cannot load the tokenizer \(")

    no_pixels = copy_release(released_tarsier2, tmp_path / "no_pixels")
    (no_pixels / "preprocessor_config.json").unlink()
    refused(no_pixels, r"no_pixels: no preprocessor_config.json")

    with pytest.raises(CheckpointError, match="--chat_template yi applies to Tarsier-7b/34b"):
        tarsier2.run(released_tarsier2["path"], tmp_path / "out-yi", export=False, chat_template="yi")
    with pytest.raises(CheckpointError, match="model_type is 'llava', expected 'qwen2_vl'"):
        tarsier2.export_released_tarsier2(released_tarsier2["path"], tmp_path / "out-export")
    with pytest.raises(SystemExit, match=r"error: .*not empty \(pass --overwrite\)"):
        convert_main(["--input", str(released_tarsier2["path"]), "--output", str(converted)])
    with pytest.raises(CheckpointError, match="converted by tarsier_hf.hub.convert.tarsier2"):
        read_released_config(released_tarsier2["path"])


# ----------------------------------------------------------------------------------------------- the command


def test_tarsier_convert_command_end_to_end(released_tarsier2, tmp_path):
    """`tarsier-convert` picks the Tarsier2 converter from config.json, both ways, exit code 0."""
    command = console_script("tarsier-convert")
    hf, back = tmp_path / "hf", tmp_path / "back"
    for args in (["--input", str(released_tarsier2["path"]), "--output", str(hf)],
                 ["--input", str(hf), "--output", str(back), "--export"]):
        result = subprocess.run([command, *args], capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((hf / "config.json").read_text())["model_type"] == "qwen2_vl"
    assert json.loads((back / "config.json").read_text())["model_type"] == "llava"
    assert sorted(p.name for p in back.glob("*.safetensors")) == sorted(released_tarsier2["shards"])
