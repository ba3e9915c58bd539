"""benchmarks/gpu_check.py at tiny shapes on CPU: every check of the GPU script runs here, so it cannot rot."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

from tests.training_runs import child_env

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_every_check_at_tiny_shapes(tmp_path):
    out = tmp_path / "rows.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--tiny", "--device", "cpu", "--frames", "2",
           "--steps", "1", "--new_tokens", "4", "--batches", "1", "2", "--json", str(out)]
    cmd += ["--tarsier2_batches", "1", "2"]
    result = subprocess.run(cmd, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = {row["check"]: row for row in json.loads(out.read_text())}
    table = result.stdout[result.stdout.index("| check |"):]
    assert all(f"| {name} |" in table for name in rows)  # one printed table holds every row

    sdpa = rows["precision bf16+sdpa"]
    assert sdpa["ok"] and sdpa["loss_rel_err"] < 0.02 and sdpa["grad_cosine"] > 0.99
    assert sdpa["loss_rel_err"] > 0  # bf16 really ran: not bit-equal to float32
    # flash-attention is CUDA-only: reported, never silently dropped
    assert rows["precision bf16+flash_attention_2"]["ok"] in (None, True)

    fsdp = rows["fsdp2 step (1 process)"]
    assert fsdp["ok"] and fsdp["units"] == 4  # 2 LlamaDecoderLayer + 2 CLIPEncoderLayer, as listed in fsdp.yaml

    train = rows["train step (grad ckpt, frozen tower)"]
    # 2 frames of 2x2 patches with separators (2 * (2 + 1) + 1 = 7 positions each) + 40 text positions
    assert train["ok"] and train["lm_positions"] == 2 * 7 + 40
    assert train["tokens_per_s"] > 0 and train["tflops"] > 0 and train["mfu"] is None  # no peak known for a CPU
    for batch in (1, 2):
        assert rows[f"generate batch {batch}"]["ok"] and rows[f"generate batch {batch}"]["new_tokens_per_s"] > 0
    # Tarsier2 (Qwen2-VL) shapes: 2 temporal patches of 4x4 patches = 8 video tokens + 40 text + 2 vision markers
    tarsier2 = rows["tarsier2 train step (grad ckpt, frozen tower + embeddings)"]
    assert tarsier2["ok"] and tarsier2["lm_positions"] == 2 * 4 * 4 // 4 + 2 + 40 and tarsier2["video_grid"] == [2, 4, 4]
    for batch in (1, 2):
        assert rows[f"tarsier2 generate batch {batch}"]["ok"]


def test_mfu_formula_and_peak_lookup():
    """6 N T for the LLM plus causal attention; the 7B config holds 4,808 LM positions for 8 frames."""
    import torch

    # benchmarks/ holds scripts, not a package: run the script's definitions by its path
    gpu_check = runpy.run_path(str(REPO / "benchmarks" / "gpu_check.py"), run_name="gpu_check")
    PEAK_BF16_TFLOPS, TarsierConfig, model_flops, peak_tflops = (
        gpu_check[name] for name in ("PEAK_BF16_TFLOPS", "TarsierConfig", "model_flops", "peak_tflops"))

    config = TarsierConfig()
    assert config.num_positions_per_frame * 8 == 4808  # 24 x (24 + 1) + 1 = 601 per 336 px frame
    flops = model_flops(config, lm_params=6_476_000_000, vision_params=303_000_000, tokens=4848, frames=8)
    lm = 6 * 6_476_000_000 * 4848
    assert lm < flops < 1.25 * lm  # attention and the frozen tower add under a quarter at this length
    assert peak_tflops(torch.device("cpu")) == ("cpu", None)
    names = list(PEAK_BF16_TFLOPS)
    assert PEAK_BF16_TFLOPS["H100"] == 989.0 and names.index("H100 PCIe") < names.index("H100")  # first match wins
