"""One GPU check in one call: precision, a 7B-shaped training step (MFU), batched generation and an FSDP 2 step.

    python benchmarks/gpu_check.py                 # on one H100 / H200: about 5 minutes, prints one Markdown table
    python benchmarks/gpu_check.py --tiny          # CPU, tiny shapes, same code path (tests/test_gpu_check.py)
    python benchmarks/gpu_check.py --json out.json # also write the rows as JSON

Rows (every check catches its own failure, e.g. out of memory, and reports it in its row):

* `precision`: a small Tarsier (CLIP 4 x 256 at 224 px + llama 4 x 512) in float32 vs bfloat16 with sdpa and, if
  `flash_attn` is importable, flash-attention 2; one forward + backward on the same inputs. Passes when the loss
  differs by < 2 % (relative), the answer logits by < 5 % (relative L2 norm) and the whole gradient (all parameters
  concatenated) has cosine similarity > 0.99 with float32 (bf16 keeps 8 mantissa bits: ~0.4 % per rounding; single
  tensors whose exact gradient is zero, such as attention key biases, are pure rounding noise and not compared).
* `train 7B`: `TarsierConfig()` = Tarsier-7b shapes (CLIP ViT-L/14-336 + 32 x 4096 llama, vocab 32,064), random
  bf16 weights, vision tower and projector frozen, 8 frames = 4,808 LM positions + prompt, gradient checkpointing,
  AdamW (fused, bf16 states) on the 6.6B LLM parameters. Step time, tokens/s, peak memory and MFU: model FLOPs
  (LLM 6 N T + causal attention 6 L d T^2, vision tower forward 2 N_v T_v + attention 4 L_v d_v P^2 per frame; the
  recomputation of checkpointing is not counted) / step time / the chip's dense bf16 peak (`PEAK_BF16_TFLOPS`).
* `generate 7B`: the same weights, 8 frames, greedy `max_new_tokens` at batch 1 / 8 / 32: new tokens/s.
* `fsdp2 step`: torch's `fully_shard` on one process, one unit per layer class listed in
  recipes/accelerate/fsdp.yaml; loss and gradients of one step equal to the unsharded model.
* `tarsier2 train` / `tarsier2 generate`: Qwen2-VL-7B shapes (the Tarsier2-7b model: a 32 x 1280 vision
  transformer with 2x2 merging + 28 x 3584 Qwen2 LM, vocab 152,064) in transformers' own
  `Qwen2VLForConditionalGeneration`, random bf16 weights, loaded positions as the release computes them
  (`tarsier_hf.mrope`). The video is the release's default input: 16 frames, each given twice (one temporal patch
  per frame), 16:9 frames at 460,800 pixels -> a 16 x 36 x 64 patch grid = 9,216 LM positions. Training: vision
  tower, embeddings and LM head frozen (AdamW's states of the rest fit one 80 GB GPU), gradient checkpointing,
  fused AdamW on the LM's layers; step time, tokens/s, MFU, peak memory. Generation:
  greedy at batch 1 and 4, new tokens/s.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

REPO = Path(__file__).resolve().parents[1]

from configuration_tarsier import TarsierConfig
from modeling_tarsier import TarsierForConditionalGeneration
from tarsier_hf.mrope import use_release_rope_index
from tarsier_hf.training.freezing import set_trainable_parts

# Dense bf16 tensor-core peak (no sparsity) by device-name substring, from the vendors' data sheets; first match wins.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "GH200": 989.0, "B200": 2250.0,
                    "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "RTX 4090": 165.0}

SMALL_VISION = dict(model_type="clip_vision_model", hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                    num_attention_heads=4, image_size=224, patch_size=14)
SMALL_TEXT = dict(model_type="llama", hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=8, vocab_size=32064, max_position_embeddings=8192)
TINY_VISION = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=2, image_size=28, patch_size=14)
TINY_TEXT = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=32064, max_position_embeddings=4096)
PROMPT = 40  # text positions around the frames (system + instruction + answer)

# Qwen2-VL-7B-Instruct's shapes (Tarsier2-Recap-7b is a fine-tune of it) and a CPU-sized twin.
QWEN2VL_7B_TEXT = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, rms_norm_eps=1e-6, max_position_embeddings=32768,
                       rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6})
QWEN2VL_7B_VISION = dict(depth=32, embed_dim=1280, hidden_size=3584, num_heads=16, mlp_ratio=4, patch_size=14,
                         spatial_merge_size=2, temporal_patch_size=2)
QWEN2VL_TINY_TEXT = dict(vocab_size=152064, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e6})
QWEN2VL_TINY_VISION = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2)
# The release's default video: 16 frames at 460,800 pixels of a 16:9 clip (504 x 896 after Qwen2-VL's rounding to
# multiples of 28) = 36 x 64 patches per frame; each frame given twice, so 16 temporal patches.
TARSIER2_GRID = (16, 36, 64)
TARSIER2_TINY_GRID = (2, 4, 4)


def peak_tflops(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    return name, next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def build(config: TarsierConfig, device, dtype, attn="sdpa", seed=0) -> TarsierForConditionalGeneration:
    torch.manual_seed(seed)
    with torch.device(device):
        model = TarsierForConditionalGeneration._from_config(config, attn_implementation=attn, dtype=dtype)
    return model


def make_inputs(config: TarsierConfig, batch: int, frames: int, device, seed=0, labels=True) -> dict:
    """Left-to-right sample `prompt[:8] + frames + prompt[8:]`: `input_ids (B, L)`, `pixel_values (B*F, 3, S, S)`."""
    generator = torch.Generator().manual_seed(seed)
    rows, cols = config.patch_grid
    frame = ([config.image_token_id] * cols + [config.image_newline_token_id]) * rows + [config.frame_end_token_id]
    text = torch.randint(1, 32000, (batch, PROMPT), generator=generator)
    ids = torch.cat([text[:, :8], torch.tensor(frame * frames).expand(batch, -1), text[:, 8:]], dim=1)
    size = config.vision_config.image_size
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
              "pixel_values": torch.randn(batch * frames, 3, size, size, generator=generator),
              "num_frames": torch.full((batch,), frames)}
    if labels:
        target = ids.clone()
        target[:, : ids.shape[1] - 16] = -100  # the last 16 text positions are the answer
        inputs["labels"] = target
    return {k: v.to(device) for k, v in inputs.items()}


def forward_backward(model, inputs, dtype) -> tuple[float, torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    inputs = dict(inputs, pixel_values=inputs["pixel_values"].to(dtype))
    out = model(**inputs)
    out.loss.backward()
    grads = {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}
    return float(out.loss.detach()), out.logits[:, -16:].float().detach(), grads


def check_precision(device, vision, text, frames) -> list[dict]:
    torch.backends.cudnn.allow_tf32 = False  # a true float32 reference (the patch embedding is a convolution)
    torch.backends.cuda.matmul.allow_tf32 = False
    config = TarsierConfig(vision_config=vision, text_config=text)
    reference = build(config, device, torch.float32)
    inputs = make_inputs(config, 2, frames, device)
    ref_loss, ref_logits, ref_grads = forward_backward(reference, inputs, torch.float32)
    state = reference.state_dict()
    del reference
    kernels = ["sdpa"]
    try:
        import flash_attn  # noqa: F401

        kernels.append("flash_attention_2")
    except ImportError:
        pass
    rows = []
    for attn in kernels:
        name = f"precision bf16+{attn}"
        try:
            model = build(config, device, torch.bfloat16, attn=attn)
            model.load_state_dict(state)
            loss, logits, grads = forward_backward(model, inputs, torch.bfloat16)
            loss_err = abs(loss - ref_loss) / abs(ref_loss)
            logit_err = float((logits - ref_logits).norm() / ref_logits.norm())
            names = sorted(ref_grads)
            flat, ref_flat = (torch.cat([g[k].flatten() for k in names]) for g in (grads, ref_grads))
            cosine = float(torch.nn.functional.cosine_similarity(flat, ref_flat, dim=0))
            ok = loss_err < 0.02 and logit_err < 0.05 and cosine > 0.99
            rows.append(dict(check=name, ok=ok, loss_rel_err=loss_err, logits_rel_err=logit_err,
                             grad_cosine=cosine, tolerance="loss < 2%, logits < 5%, gradient cosine > 0.99"))
            del model
        except Exception as error:  # noqa: BLE001 - reported in the table
            rows.append(dict(check=name, ok=False, error=f"{type(error).__name__}: {error}"[:200]))
    if "flash_attention_2" not in kernels:
        rows.append(dict(check="precision bf16+flash_attention_2", ok=None, note="flash_attn not importable"))
    return rows


def model_flops(config: TarsierConfig, lm_params: int, vision_params: int, tokens: int, frames: int) -> float:
    """Model FLOPs of one training step of one sample (see the module docstring)."""
    text, vision = config.text_config, config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2 + 1
    lm = 6 * lm_params * tokens + 6 * text.num_hidden_layers * text.hidden_size * tokens**2
    tower = frames * (2 * vision_params * patches + 4 * vision.num_hidden_layers * vision.hidden_size * patches**2)
    return lm + tower


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(model, inputs: dict, optimizer, steps: int, device) -> tuple[torch.Tensor, float]:
    """One warm-up and `steps` timed optimizer steps on `inputs` (peak memory counted from here on CUDA):
    `(last loss, median step seconds)`."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(steps + 1):  # the first step warms up
        synchronize(device)
        start = time.perf_counter()
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if step:
            times.append(time.perf_counter() - start)
    return loss, sorted(times)[len(times) // 2]


def check_training(model, config, device, frames, steps) -> dict:
    set_trainable_parts(model, train_vision_tower=False, train_projector=False, train_language_model=True)
    model.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    lm_params = sum(p.numel() for n, p in model.named_parameters()
                    if p.requires_grad and "embed_tokens" not in n)  # embedding lookups cost no FLOPs
    vision_params = sum(p.numel() for p in model.model.vision_tower.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda")
    inputs = make_inputs(config, 1, frames, device)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    tokens = inputs["input_ids"].numel()
    loss, step_time = timed_steps(model, inputs, optimizer, steps, device)
    name, peak = peak_tflops(device)
    flops = model_flops(config, lm_params, vision_params, tokens, frames)
    del optimizer
    model.language_model.gradient_checkpointing_disable()
    for p in params:
        p.grad = None
    return dict(check="train step (grad ckpt, frozen tower)", ok=bool(math.isfinite(float(loss))), device=name,
                lm_positions=tokens, trainable_params=sum(p.numel() for p in params), step_s=step_time,
                tokens_per_s=tokens / step_time, tflops=flops / step_time / 1e12,
                mfu=None if peak is None else flops / step_time / 1e12 / peak,
                peak_mem_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None)


@torch.inference_mode()
def timed_generation(model, inputs: dict, device, batch: int, new_tokens: int) -> dict:
    """Greedy `generate` of exactly `new_tokens` per row: `{ok, new_tokens_per_s, seconds, prompt_positions,
    peak_mem_gib}` (peak memory on CUDA only)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    synchronize(device)
    elapsed = time.perf_counter() - start
    made = (out.shape[1] - inputs["input_ids"].shape[1]) * batch
    return dict(ok=made == batch * new_tokens, new_tokens_per_s=made / elapsed, seconds=elapsed,
                prompt_positions=inputs["input_ids"].shape[1],
                peak_mem_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None)


@torch.inference_mode()
def check_generation(model, config, device, frames, batches, new_tokens) -> list[dict]:
    model.eval()
    rows = []
    for batch in batches:
        name = f"generate batch {batch}"
        try:
            inputs = make_inputs(config, batch, frames, device, labels=False)
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
            rows.append(dict(check=name, **timed_generation(model, inputs, device, batch, new_tokens)))
        except torch.OutOfMemoryError as error:
            rows.append(dict(check=name, ok=False, error=f"out of memory: {str(error)[:120]}"))
        finally:
            inputs = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def build_qwen2_vl(text: dict, vision: dict, device, dtype, seed=0):
    """A random `Qwen2VLForConditionalGeneration` with the release's M-RoPE positions (`tarsier_hf.mrope`)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    torch.manual_seed(seed)
    config = Qwen2VLConfig(text_config=text, vision_config=vision)
    with torch.device(device):
        model = Qwen2VLForConditionalGeneration._from_config(config, attn_implementation="sdpa", dtype=dtype)
    use_release_rope_index(model)
    return model


def make_qwen2_vl_inputs(config, batch: int, grid: tuple[int, int, int], device, seed=0, labels=True) -> dict:
    """`prompt[:8] + <|vision_start|> + video tokens + <|vision_end|> + prompt[8:]` per row: `input_ids (B, L)`,
    `mm_token_type_ids (B, L)` (2 on video tokens), `pixel_values_videos (B*t*h*w, 3*2*14*14)`,
    `video_grid_thw (B, 3)`."""
    generator = torch.Generator().manual_seed(seed)
    t, h, w = grid
    merge = config.vision_config.spatial_merge_size
    video = t * h * w // merge**2
    text = torch.randint(1, 150000, (batch, PROMPT), generator=generator)
    ids = torch.cat([text[:, :8], torch.full((batch, 1), config.vision_start_token_id),
                     torch.full((batch, video), config.video_token_id), torch.full((batch, 1), config.vision_end_token_id),
                     text[:, 8:]], dim=1)
    patch = 3 * config.vision_config.temporal_patch_size * config.vision_config.patch_size ** 2
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
              "mm_token_type_ids": (ids == config.video_token_id).long() * 2,
              "pixel_values_videos": torch.randn(batch * t * h * w, patch, generator=generator),
              "video_grid_thw": torch.tensor([grid] * batch)}
    if labels:
        inputs["labels"] = torch.where(torch.arange(ids.shape[1]) >= ids.shape[1] - (PROMPT - 8), ids, -100)
    return {k: v.to(device) for k, v in inputs.items()}


def check_qwen2_vl(device, text, vision, grid, steps, batches, new_tokens, label) -> list[dict]:
    """The Tarsier2-shaped training step and generation (module docstring); each failure reported in its row."""
    rows = []
    try:
        model = build_qwen2_vl(text, vision, device, torch.bfloat16)
    except torch.OutOfMemoryError as error:
        return [dict(check="tarsier2 build", ok=False, error=f"out of memory: {str(error)[:120]}", config=label)]
    config = model.config
    try:
        # the vision tower and the 152k-row embedding and head stay frozen, so that AdamW's states fit one 80 GB GPU
        model.model.visual.requires_grad_(False)
        model.get_input_embeddings().requires_grad_(False)
        model.get_output_embeddings().requires_grad_(False)
        model.model.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        lm_params = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "embed_tokens" not in n)
        vision_params = sum(p.numel() for p in model.model.visual.parameters())
        optimizer = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda")
        inputs = make_qwen2_vl_inputs(config, 1, grid, device)
        tokens = inputs["input_ids"].numel()
        patches = inputs["pixel_values_videos"].shape[0]
        loss, step_time = timed_steps(model, inputs, optimizer, steps, device)
        text_config = config.text_config
        # LM 6 N T + causal attention 6 L d T^2; vision forward 2 N_v P + attention 4 L_v d_v (P / t)^2 per frame
        flops = (6 * lm_params * tokens + 6 * text_config.num_hidden_layers * text_config.hidden_size * tokens**2
                 + 2 * vision_params * patches
                 + 4 * config.vision_config.depth * config.vision_config.embed_dim * patches * (patches // grid[0]))
        name, peak = peak_tflops(device)
        rows.append(dict(check="tarsier2 train step (grad ckpt, frozen tower + embeddings)", ok=bool(math.isfinite(float(loss))),
                         device=name, lm_positions=tokens, video_grid=list(grid), trainable_params=sum(
                             p.numel() for p in params), step_s=step_time, tokens_per_s=tokens / step_time,
                         tflops=flops / step_time / 1e12, mfu=None if peak is None else flops / step_time / 1e12 / peak,
                         peak_mem_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
                         config=label))
        del optimizer
    except torch.OutOfMemoryError as error:
        rows.append(dict(check="tarsier2 train step (grad ckpt, frozen tower + embeddings)", ok=False,
                         error=f"out of memory: {str(error)[:120]}", config=label))
    finally:
        model.model.language_model.gradient_checkpointing_disable()
        for p in model.parameters():
            p.grad = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    model.eval()
    for batch in batches:
        name = f"tarsier2 generate batch {batch}"
        try:
            inputs = make_qwen2_vl_inputs(config, batch, grid, device, labels=False)
            rows.append(dict(check=name, **timed_generation(model, inputs, device, batch, new_tokens), config=label))
        except torch.OutOfMemoryError as error:
            rows.append(dict(check=name, ok=False, error=f"out of memory: {str(error)[:120]}", config=label))
        finally:
            inputs = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def recipe_layer_classes() -> list[str]:
    """`fsdp_transformer_layer_cls_to_wrap` of recipes/accelerate/fsdp.yaml (the one FSDP definition)."""
    import yaml

    recipe = yaml.safe_load((REPO / "recipes" / "accelerate" / "fsdp.yaml").read_text())
    return [c.strip() for c in recipe["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"].split(",")]


def check_fsdp(device, vision, text, frames) -> dict:
    """One process, world size 1: fully_shard per recipe layer class + root; loss and grads vs the plain model."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    started = not dist.is_initialized()
    if started:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    try:
        config = TarsierConfig(vision_config=vision, text_config=text)
        plain = build(config, device, torch.float32)
        inputs = make_inputs(config, 2, frames, device)
        ref_loss, _, ref_grads = forward_backward(plain, inputs, torch.float32)
        sharded = build(config, device, torch.float32)
        sharded.load_state_dict(plain.state_dict())
        classes = set(recipe_layer_classes())
        units = [m for m in sharded.modules() if type(m).__name__ in classes]
        for module in units:
            fully_shard(module)
        fully_shard(sharded)
        loss, _, grads = forward_backward(sharded, inputs, torch.float32)
        full = {k: g.full_tensor() if hasattr(g, "full_tensor") else g for k, g in grads.items()}  # DTensor grads
        grad_err = max(float((full[k] - g).abs().max()) for k, g in ref_grads.items())
        ok = len(units) > 0 and abs(loss - ref_loss) < 1e-4 and grad_err < 1e-4
        return dict(check="fsdp2 step (1 process)", ok=ok, units=len(units), loss_abs_err=abs(loss - ref_loss),
                    max_grad_abs_err=grad_err, tolerance="1e-4 (float32)")
    except Exception as error:  # noqa: BLE001 - reported in the table
        return dict(check="fsdp2 step (1 process)", ok=False, error=f"{type(error).__name__}: {error}"[:200])
    finally:
        if started:
            dist.destroy_process_group()


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def table(rows: list[dict]) -> str:
    lines = ["| check | ok | measurements |", "|---|---|---|"]
    for row in rows:
        details = ", ".join(f"{k}={fmt(v)}" for k, v in row.items() if k not in ("check", "ok"))
        lines.append(f"| {row['check']} | {fmt(row['ok'])} | {details} |")
    return "\n".join(lines)


@dataclass
class CheckArgs:
    tiny: bool = field(default=False, metadata={"help": "CPU-sized shapes (the test suite runs this)"})
    device: str | None = field(default=None, metadata={"help": "default: cuda if available, else cpu"})
    frames: int = 8
    steps: int = field(default=3, metadata={"help": "timed training steps (after one warm-up)"})
    new_tokens: int = 64
    batches: list[int] = field(default_factory=lambda: [1, 8, 32], metadata={"help": "generation batch sizes"})
    tarsier2_batches: list[int] = field(default_factory=lambda: [1, 4],
                                        metadata={"help": "Tarsier2 generation batch sizes"})
    json: str | None = field(default=None, metadata={"help": "also write the rows to this file"})


def main(argv=None) -> int:
    (args,) = HfArgumentParser(CheckArgs, description=__doc__.split("\n\n")[0]).parse_args_into_dataclasses(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.tiny:
        small_vision, small_text = TINY_VISION, TINY_TEXT
        big = TarsierConfig(vision_config=TINY_VISION, text_config=TINY_TEXT)
    else:
        small_vision, small_text, big = SMALL_VISION, SMALL_TEXT, TarsierConfig()
    rows = check_precision(device, small_vision, small_text, frames=2)
    rows.append(check_fsdp(device, small_vision, small_text, frames=2))
    label = "tiny" if args.tiny else "7B"
    try:
        model = build(big, device, torch.bfloat16)
        rows.append({**check_training(model, big, device, args.frames, args.steps), "config": label})
        rows += [{**r, "config": label} for r in check_generation(model, big, device, args.frames, args.batches,
                                                                   args.new_tokens)]
    except torch.OutOfMemoryError as error:
        rows.append(dict(check=f"train/generate {label}", ok=False, error=f"out of memory: {str(error)[:120]}"))
    model = None
    if device.type == "cuda":
        torch.cuda.empty_cache()
    text, vision, grid = ((QWEN2VL_TINY_TEXT, QWEN2VL_TINY_VISION, TARSIER2_TINY_GRID) if args.tiny
                          else (QWEN2VL_7B_TEXT, QWEN2VL_7B_VISION, TARSIER2_GRID))
    rows += check_qwen2_vl(device, text, vision, grid, args.steps, args.tarsier2_batches, args.new_tokens, label)
    print(f"device: {peak_tflops(device)[0]}, torch {torch.__version__}")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if all(r["ok"] is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
