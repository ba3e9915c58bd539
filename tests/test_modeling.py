"""TarsierConfig / TarsierForConditionalGeneration: layout, batching, generation, training, remote-code loading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging as hf_logging

from configuration_tarsier import TarsierConfig
from modeling_tarsier import TarsierForConditionalGeneration
from tests.tiny_tarsier import FRAME_END, IMAGE, NEWLINE, VIDEO, frame_run, left_pad, sample_ids, tiny_config


def make_model(config=None, seed=0) -> TarsierForConditionalGeneration:
    torch.manual_seed(seed)
    return TarsierForConditionalGeneration(config or tiny_config()).eval()


def frames(n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 28, 28, generator=generator)


# ----------------------------------------------------------------------------------------------- layout


@pytest.mark.parametrize("image_size,patch_size", [(28, 14), (42, 14), (336, 14), (384, 16)])
def test_positions_per_frame_formula(image_size, patch_size):
    vision = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, image_size=image_size, patch_size=patch_size)
    side = image_size // patch_size
    on = TarsierConfig(vision_config=vision)
    off = TarsierConfig(vision_config=vision, use_frame_separators=False)
    assert on.num_positions_per_frame == side * (side + 1) + 1
    assert off.num_positions_per_frame == side * side
    assert on.num_patches_per_frame == off.num_patches_per_frame == side * side


def test_released_7b_layout_is_601_positions():
    assert TarsierConfig().num_positions_per_frame == 24 * 25 + 1 == 601


@pytest.mark.parametrize("separators", [True, False])
def test_model_fills_exactly_the_layout(separators):
    config = tiny_config(use_frame_separators=separators)
    model = make_model(config)
    ids = torch.tensor([sample_ids(config, 2)])
    out = model(input_ids=ids, pixel_values=frames(2), num_frames=torch.tensor([2]))
    assert out.logits.shape == (1, ids.shape[1], config.text_config.vocab_size)
    assert out.image_hidden_states.shape == (2, config.num_patches_per_frame, config.text_config.hidden_size)
    # One position more or fewer than the layout is an error, never a silent misalignment.
    with pytest.raises(ValueError, match="do not match"):
        model(input_ids=torch.tensor([sample_ids(config, 2) + [IMAGE]]), pixel_values=frames(2))


def test_newline_and_frame_end_positions_keep_their_token_embeddings():
    config = tiny_config()
    model = make_model(config)
    ids = torch.tensor([sample_ids(config, 1)])
    captured = {}

    def capture(module, args, kwargs):
        captured["embeds"] = kwargs["inputs_embeds"]

    handle = model.model.language_model.register_forward_pre_hook(capture, with_kwargs=True)
    model(input_ids=ids, pixel_values=frames(1))
    handle.remove()
    embeds = captured["embeds"][0]
    table = model.get_input_embeddings().weight
    features = model.model.get_image_features(frames(1))[0]
    image_positions = (ids[0] == IMAGE).nonzero().flatten()
    torch.testing.assert_close(embeds[image_positions], features)
    for token in (NEWLINE, FRAME_END, 7, 9):
        for position in (ids[0] == token).nonzero().flatten():
            torch.testing.assert_close(embeds[position], table[token])


# ----------------------------------------------------------------------------------------------- errors


def test_clear_errors_on_bad_inputs():
    config = tiny_config()
    model = make_model(config)
    ids = torch.tensor([sample_ids(config, 2)])
    with pytest.raises(ValueError, match="do not match"):
        model(input_ids=ids, pixel_values=frames(3))
    with pytest.raises(ValueError, match=r"pixel_values must have shape \(total_frames, 3, 28, 28\)"):
        model(input_ids=ids, pixel_values=frames(2).unsqueeze(0))
    with pytest.raises(ValueError, match=r"pixel_values must have shape"):
        model(input_ids=ids, pixel_values=torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="no pixel_values"):
        model(input_ids=ids)
    with pytest.raises(ValueError, match="num_frames sums to 3"):
        model(input_ids=ids, pixel_values=frames(2), num_frames=torch.tensor([3]))
    with pytest.raises(ValueError, match="<video> placeholder"):
        model(input_ids=torch.tensor([[1, VIDEO, 9]]))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(image_token_id=500), "image_token_id=500 is outside the text model's vocabulary"),
        (dict(frame_end_token_id=-1), "frame_end_token_id=-1 is outside"),
        (dict(image_newline_token_id=IMAGE), "must be distinct"),
        (dict(vision_feature_select_strategy="cls"), "expected 'default' or 'full'"),
        (dict(vision_feature_layer=3), "out of range"),
        (dict(vision_feature_layer=-4), "out of range"),
        (dict(vision_feature_select_strategy="full"), "no place for CLIP's CLS"),
        (dict(num_frame_embeddings=-1), "num_frame_embeddings=-1 must be an integer >= 0"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_siglip_default_strategy_is_rejected():
    with pytest.raises(ValueError, match="has none: use 'full'"):
        tiny_config(vision="siglip", vision_feature_select_strategy="default")


def test_long_sequence_warns_but_runs():
    config = tiny_config(text_config=dict(model_type="llama", hidden_size=64, intermediate_size=128,
                                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                          vocab_size=128, max_position_embeddings=16))
    model = make_model(config)
    ids = torch.tensor([sample_ids(config, 3)])  # 27 positions > 16
    logger = hf_logging.get_logger("modeling_tarsier")
    with CaptureLogger(logger) as captured:
        out = model(input_ids=ids, pixel_values=frames(3))
    assert "exceeds the language model's trained positions (16)" in captured.out
    assert torch.isfinite(out.logits).all()


# ----------------------------------------------------------------------------------------------- variants


@pytest.mark.parametrize("vision,text", [("clip", "llama"), ("clip", "mistral"), ("siglip", "qwen2"), ("siglip", "llama")])
def test_vision_and_text_families(vision, text):
    config = tiny_config(vision=vision, text=text)
    model = make_model(config)
    ids = torch.tensor([sample_ids(config, 2)])
    out = model(input_ids=ids, pixel_values=frames(2), labels=ids)
    assert torch.isfinite(out.loss)
    assert type(model.model.vision_tower).__name__ == ("CLIPVisionModel" if vision == "clip" else "SiglipVisionModel")


def test_images_videos_and_text_only_in_one_batch():
    config = tiny_config()
    model = make_model(config)
    sequences = [sample_ids(config, 3), sample_ids(config, 1), [1, 7, 8, 9]]  # video, image, text only
    ids, mask = left_pad(sequences)
    out = model(input_ids=ids, attention_mask=mask, pixel_values=frames(4), num_frames=torch.tensor([3, 1, 0]))
    assert torch.isfinite(out.logits).all()


def test_frame_embeddings_give_each_frame_its_index_in_its_video(tmp_path):
    # The same picture at frames 0 and 1 of a video: without frame embeddings (the released model) the two get the
    # same features, so only the LLM's positions tell them apart; with them they differ, and frame k of one video
    # gets the same embedding as frame k of another.
    picture = frames(1).repeat(3, 1, 1, 1)
    released = make_model(tiny_config())
    same = released.model.get_image_features(picture, torch.tensor([2, 1]))
    torch.testing.assert_close(same[0], same[1])
    model = make_model(tiny_config(num_frame_embeddings=4))
    features = model.model.get_image_features(picture, torch.tensor([2, 1]))  # video A: frames 0, 1; video B: 0
    assert not torch.allclose(features[0], features[1])
    torch.testing.assert_close(features[0], features[2])
    table = model.model.multi_modal_projector.frame_embedding.weight
    torch.testing.assert_close(features[1] - features[0], (table[1] - table[0]).expand_as(features[0]))
    with pytest.raises(ValueError, match="pass num_frames"):
        model.model.get_image_features(picture)
    with pytest.raises(ValueError, match="a sample has 5 frames but the model has frame embeddings for 4"):
        model.model.get_image_features(frames(5), torch.tensor([5]))
    model.save_pretrained(tmp_path)
    loaded = TarsierForConditionalGeneration.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.model.multi_modal_projector.frame_embedding.weight, table)


@pytest.mark.parametrize("tied", [True, False])
def test_tied_and_untied_embeddings_survive_save_load(tmp_path, tied):
    config = tiny_config(tie_word_embeddings=tied)
    model = make_model(config)
    model.save_pretrained(tmp_path)
    loaded = TarsierForConditionalGeneration.from_pretrained(tmp_path)
    assert (loaded.lm_head.weight.data_ptr() == loaded.get_input_embeddings().weight.data_ptr()) == tied
    torch.testing.assert_close(loaded.lm_head.weight, model.lm_head.weight)


def test_text_config_tie_is_followed():
    config = tiny_config(text_config=dict(model_type="qwen2", hidden_size=64, intermediate_size=128,
                                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                          vocab_size=128, tie_word_embeddings=True))
    assert config.tie_word_embeddings
    model = make_model(config)
    assert model.lm_head.weight is model.get_input_embeddings().weight


def test_dtype_loading_and_device_map(tmp_path):
    make_model().save_pretrained(tmp_path)
    model = TarsierForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16, device_map="auto")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    no_split = model._no_split_modules
    assert "LlamaDecoderLayer" in no_split and "CLIPEncoderLayer" in no_split
    config = model.config
    out = model(input_ids=torch.tensor([sample_ids(config, 1)]), pixel_values=frames(1))  # float32 pixels cast
    assert out.logits.dtype == torch.bfloat16


def test_sdpa_is_the_default_and_eager_matches():
    config = tiny_config()
    model = make_model(config)
    assert model.config._attn_implementation == "sdpa"
    assert model.model.language_model.config._attn_implementation == "sdpa"
    eager = make_model(tiny_config())
    eager.set_attn_implementation("eager")
    ids = torch.tensor([sample_ids(config, 2)])
    torch.testing.assert_close(
        model(input_ids=ids, pixel_values=frames(2)).logits, eager(input_ids=ids, pixel_values=frames(2)).logits,
        atol=1e-5, rtol=1e-5,
    )


# ----------------------------------------------------------------------------------------------- batching & generation


def test_left_padded_batch_with_mixed_frame_counts_equals_one_by_one():
    config = tiny_config()
    model = make_model(config)
    counts = [1, 4, 2, 0]
    sequences = [sample_ids(config, n, prefix=(1, 7 + i), suffix=(9, 10 + i, 11)) for i, n in enumerate(counts)]
    pixel_values = frames(sum(counts))
    ids, mask = left_pad(sequences)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    batched = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, pixel_values=pixel_values,
                    num_frames=torch.tensor(counts)).logits
    start = 0
    for row, (seq, n) in enumerate(zip(sequences, counts)):
        single = model(input_ids=torch.tensor([seq]), pixel_values=pixel_values[start:start + n] if n else None).logits
        start += n
        diff = (batched[row, -len(seq):] - single[0]).abs().max().item()
        assert diff <= 1e-5, f"sample {row} differs by {diff}"


def test_generate_with_cache_equals_greedy_loop_without_cache():
    config = tiny_config()
    model = make_model(config, seed=3)
    ids = torch.tensor([sample_ids(config, 2)])
    pixel_values = frames(2)
    generated = model.generate(input_ids=ids, pixel_values=pixel_values, num_frames=torch.tensor([2]),
                               max_new_tokens=12, do_sample=False, use_cache=True, eos_token_id=None)
    loop = ids
    with torch.no_grad():
        for _ in range(12):
            logits = model(input_ids=loop, pixel_values=pixel_values, use_cache=False).logits
            loop = torch.cat([loop, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, loop)


def test_batched_generation_equals_one_by_one():
    config = tiny_config()
    model = make_model(config, seed=5)
    counts = [2, 1, 3]
    sequences = [sample_ids(config, n, prefix=(1, 20 + i)) for i, n in enumerate(counts)]
    pixel_values = frames(sum(counts), seed=1)
    ids, mask = left_pad(sequences)
    batched = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixel_values,
                             num_frames=torch.tensor(counts), max_new_tokens=8, do_sample=False, pad_token_id=0,
                             eos_token_id=None)
    start = 0
    for row, (seq, n) in enumerate(zip(sequences, counts)):
        single = model.generate(input_ids=torch.tensor([seq]), pixel_values=pixel_values[start:start + n],
                                max_new_tokens=8, do_sample=False, eos_token_id=None)
        start += n
        assert batched[row, -8:].tolist() == single[0, -8:].tolist()


# ----------------------------------------------------------------------------------------------- training


def labelled_sample(config):
    ids = torch.tensor([sample_ids(config, 2, suffix=(9, 30, 31, 32, 33, 34, 35, 11))])
    labels = torch.full_like(ids, -100)
    labels[0, -7:] = ids[0, -7:]  # the "assistant" tokens
    return ids, labels


def test_optimizer_steps_drive_the_loss_down():
    config = tiny_config()
    model = make_model(config).train()
    ids, labels = labelled_sample(config)
    pixel_values = frames(2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = model(input_ids=ids, pixel_values=pixel_values, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], losses


def test_gradient_checkpointing_gives_the_same_gradients():
    config = tiny_config()
    ids, labels = labelled_sample(config)
    pixel_values = frames(2)
    grads = []
    for checkpointing in (False, True):
        model = make_model(config).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            assert model.model.language_model.gradient_checkpointing
        model(input_ids=ids, pixel_values=pixel_values, labels=labels).loss.backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5, msg=name)


def test_fused_loss_path_sees_hidden_states_aligned_with_labels():
    """TRL's fused LM head calls `model.model(**inputs)` and multiplies hidden states by `lm_head.weight`."""
    config = tiny_config()
    model = make_model(config)
    ids, labels = labelled_sample(config)
    inputs = dict(input_ids=ids, pixel_values=frames(2), num_frames=torch.tensor([2]), attention_mask=torch.ones_like(ids))
    hidden = model.base_model(**inputs).last_hidden_state
    assert model.base_model is model.model and hidden.shape[:2] == labels.shape
    logits = hidden @ model.get_output_embeddings().weight.T
    fused = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100)
    torch.testing.assert_close(fused, model(**inputs, labels=labels).loss)


# ----------------------------------------------------------------------------------------------- remote code


LOAD_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys, torch

    class BlockRepoModules(importlib.abc.MetaPathFinder):
        # The repo may be pip-installed here; make sure only the code copied next to the weights can load.
        def find_spec(self, name, path=None, target=None):
            if name in ("configuration_tarsier", "modeling_tarsier", "processing_tarsier"):
                raise ImportError(f"blocked repo module {name}")

    sys.meta_path.insert(0, BlockRepoModules())
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText

    folder, inputs_file, out_file = sys.argv[1:4]
    inputs = torch.load(inputs_file)
    results = {}
    for auto in (AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText):
        model = auto.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            out = model(**inputs)
        tensor = out.last_hidden_state if auto is AutoModel else out.logits
        results[auto.__name__] = tensor.tolist()
        if auto is AutoModelForImageTextToText:
            generated = model.generate(**inputs, max_new_tokens=5, do_sample=False, eos_token_id=None)
            results["generated"] = generated.tolist()
    results["config_class"] = type(AutoConfig.from_pretrained(folder, trust_remote_code=True)).__name__
    json.dump(results, open(out_file, "w"))
    """
)


def test_save_then_load_through_every_auto_class_in_a_fresh_process(tmp_path):
    config = tiny_config()
    model = make_model(config)
    folder = tmp_path / "tiny-tarsier"
    model.save_pretrained(folder)
    saved = json.loads((folder / "config.json").read_text())
    assert saved["auto_map"] == {
        "AutoConfig": "configuration_tarsier.TarsierConfig",
        "AutoModel": "modeling_tarsier.TarsierModel",
        "AutoModelForCausalLM": "modeling_tarsier.TarsierForConditionalGeneration",
        "AutoModelForImageTextToText": "modeling_tarsier.TarsierForConditionalGeneration",
    }
    code = {"modeling_tarsier.py", "configuration_tarsier.py", "model_card_tarsier.py"}  # imported relatively
    assert code <= {path.name for path in folder.iterdir()}

    inputs = dict(input_ids=torch.tensor([sample_ids(config, 2)]), pixel_values=frames(2), num_frames=torch.tensor([2]))
    torch.save(inputs, tmp_path / "inputs.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(folder), str(tmp_path / "inputs.pt"), str(tmp_path / "out.json")],
        cwd=workdir, env=env, check=True, timeout=300,
    )
    results = json.loads((tmp_path / "out.json").read_text())
    with torch.no_grad():
        expected = model(**inputs)
        expected_hidden = model.model(**inputs).last_hidden_state
        expected_generated = model.generate(**inputs, max_new_tokens=5, do_sample=False, eos_token_id=None)
    assert results["config_class"] == "TarsierConfig"
    assert torch.equal(torch.tensor(results["AutoModel"]), expected_hidden)
    assert torch.equal(torch.tensor(results["AutoModelForCausalLM"]), expected.logits)
    assert torch.equal(torch.tensor(results["AutoModelForImageTextToText"]), expected.logits)
    assert results["generated"] == expected_generated.tolist()


def test_loading_without_trust_remote_code_is_refused(tmp_path):
    """In a fresh interpreter (other tests register the repo's own classes with the Auto classes in-process, as
    `tarsier_hf.inference.batch` and `tarsier_hf.inference.serve` do), a saved Tarsier folder is refused without `trust_remote_code`."""
    make_model().save_pretrained(tmp_path)
    script = textwrap.dedent(f"""
        from transformers import AutoModelForImageTextToText
        try:
            AutoModelForImageTextToText.from_pretrained({str(tmp_path)!r}, trust_remote_code=False)
        except ValueError as error:
            assert "trust_remote_code" in str(error), error
            print("REFUSED")
        """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "REFUSED" in proc.stdout, proc.stderr[-2000:]


def test_frame_run_helper_matches_config():
    config = tiny_config()
    assert len(frame_run(config)) == config.num_positions_per_frame == 2 * 3 + 1


# ------------------------------------------------------------------ pooled features and the CLS feature


@pytest.mark.parametrize("strategy", ["default", "full"])
def test_pooled_features_are_the_average_of_the_patch_features(strategy):
    """vision_feature_pooling=2 on a 2x2 patch grid leaves one feature per frame: the projected mean of the four
    patch features (LLaVA-NeXT-Video's average pooling); a CLS feature kept by "full" stays unpooled in front."""
    config = tiny_config(vision_feature_pooling=2, vision_feature_select_strategy=strategy, use_frame_separators=False)
    model = make_model(config)
    pixels = frames(3)
    hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[config.vision_feature_layer]
    expected = hidden[:, 1:].mean(1, keepdim=True)
    if strategy == "full":
        expected = torch.cat([hidden[:, :1], expected], dim=1)
    with torch.no_grad():
        features = model.model.get_image_features(pixels)
        assert torch.allclose(features, model.model.multi_modal_projector(expected), atol=1e-6)
    assert config.num_patches_per_frame == features.shape[1] == (2 if strategy == "full" else 1)
    ids = torch.tensor([sample_ids(config, 3)])  # the layout follows the pooled grid
    assert model(input_ids=ids, pixel_values=pixels).logits.shape[1] == ids.shape[1]


def test_pooling_must_divide_the_patch_grid():
    with pytest.raises(ValueError, match="vision_feature_pooling=3 must be a positive divisor of the patch grid side"):
        tiny_config(vision_feature_pooling=3)


def test_processor_layout_follows_pooling_and_the_cls_feature(smollm2_dir):
    """The processor writes exactly the model's positions per frame for pooled and CLS-keeping configurations."""
    from transformers import AutoTokenizer

    from processing_tarsier import TarsierProcessor

    for pooling, strategy in ((1, "default"), (2, "default"), (4, "full"), (1, "full")):
        vision = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, image_size=64, patch_size=16)
        config = TarsierConfig(vision_config=vision, use_frame_separators=False, vision_feature_pooling=pooling,
                               vision_feature_select_strategy=strategy)
        processor = TarsierProcessor.from_parts(
            AutoTokenizer.from_pretrained(smollm2_dir), image_processor="clip", image_size=64, patch_size=16,
            use_frame_separators=False, vision_feature_pooling=pooling,
            num_additional_image_tokens=int(strategy == "full"))
        assert processor.tokens_per_frame == len(processor.frame_token_ids()) == config.num_positions_per_frame
        assert config.num_positions_per_frame == (4 // pooling) ** 2 + int(strategy == "full")
    with pytest.raises(ValueError, match="needs use_frame_separators=False"):
        TarsierProcessor.from_parts(AutoTokenizer.from_pretrained(smollm2_dir), image_processor="clip", image_size=64,
                                    patch_size=16, num_additional_image_tokens=1)
