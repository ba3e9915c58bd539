"""DeepSpeed ZeRO-2 / ZeRO-3 from recipes/accelerate/deepspeed_zero{2,3}.yaml (needs `pip install deepspeed`).

Measured with deepspeed 0.19.8, torch 2.13 CPU, accelerate 1.15: DeepSpeed's CPU accelerator trains ZeRO-2 and
ZeRO-3 over gloo (its shm all-reduce op is JIT-built with ninja on first use). `accelerate launch` cannot drive it
on CPU processes: with `--use_cpu` accelerate never selects DeepSpeed (`... and not cpu` in AcceleratorState), and
without it the processes see one process each (num_processes 1, all main) while DeepSpeed sees two, which fails
DeepSpeed's batch check (`train_batch_size 2 != 2 * 1 * 2`). So here the recipe files are turned into DeepSpeed
configs the way accelerate does (its `DeepSpeedPlugin`), parsed by DeepSpeed's own `DeepSpeedConfig`, and the
engine itself trains the tiny Tarsier on two CPU processes; the accelerate + Trainer run is for GPUs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.training_runs import child_env

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes" / "accelerate"


def deepspeed_config(recipe: Path, micro_batch: int, accumulation: int, world_size: int, clipping: float) -> dict:
    """The DeepSpeed config accelerate builds from a recipe file, with the values the Trainer fills in."""
    from accelerate.utils import DeepSpeedPlugin

    recipe_config = yaml.safe_load(recipe.read_text())
    plugin = DeepSpeedPlugin(**recipe_config["deepspeed_config"])
    plugin.deepspeed_config_process(
        must_match=False, train_micro_batch_size_per_gpu=micro_batch, gradient_accumulation_steps=accumulation,
        train_batch_size=micro_batch * accumulation * world_size, gradient_clipping=clipping,
    )
    if recipe_config.get("mixed_precision") == "bf16":
        plugin.set_mixed_precision("bf16")
    return plugin.deepspeed_config


@pytest.mark.parametrize("name, stage", [("deepspeed_zero2", 2), ("deepspeed_zero3", 3)])
def test_recipe_configs_parse_with_deepspeed(name, stage):
    from deepspeed.runtime.config import DeepSpeedConfig

    stage2 = yaml.safe_load((REPO / "recipes" / "stage2.yaml").read_text())
    config = deepspeed_config(RECIPES / f"{name}.yaml", stage2["per_device_train_batch_size"],
                              stage2["gradient_accumulation_steps"], world_size=1, clipping=stage2["max_grad_norm"])
    assert "auto" not in json.dumps(config)
    parsed = DeepSpeedConfig(config)  # no process group: DeepSpeed checks the batch sizes for one process
    assert parsed.zero_optimization_stage == stage and parsed.zero_enabled
    assert parsed.bfloat16_config.enabled and parsed.gradient_clipping == 1.0
    assert parsed.train_micro_batch_size_per_gpu == 6 and parsed.train_batch_size == 6
    assert parsed.zero_config.offload_optimizer is None or parsed.zero_config.offload_optimizer.device == "none"
    # ZeRO-3 gathers the 16-bit weights at save time, so the output folder loads with from_pretrained
    assert parsed.zero_config.gather_16bit_weights_on_model_save is (stage == 3)


ENGINE = textwrap.dedent(
    """
    import json, sys
    import torch, torch.distributed as dist, deepspeed
    from tests.test_deepspeed import deepspeed_config
    from pathlib import Path
    from tarsier_hf.training.collator import TarsierVideoCollator
    from tarsier_hf.training.layouts import normalize_row
    from tarsier_hf.training.freezing import set_trainable_parts
    from tarsier_hf.families import load_model_and_processor
    from frame_sampling_tarsier import UniformSampling

    recipe, folder, data_dir, out = sys.argv[1:5]
    deepspeed.init_distributed(dist_backend="gloo")
    rank = dist.get_rank()
    config = deepspeed_config(Path(recipe), micro_batch=2, accumulation=1, world_size=2, clipping=1.0)
    config.pop("bf16", None)  # float32 on CPU
    torch.manual_seed(0)
    model, processor, _ = load_model_and_processor(folder, dtype="float32")
    model.train()
    set_trainable_parts(model, train_vision_tower=False, train_projector=False, train_language_model=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    rows = [normalize_row(json.loads(line), data_dir) for line in open(f"{data_dir}/good.jsonl")]
    batch = TarsierVideoCollator(processor, UniformSampling(2))(rows[2 * rank: 2 * rank + 2])
    inputs = {k: v for k, v in batch.items() if not k.startswith("skipped")}
    losses = []
    for _ in range(5):
        loss = engine(**inputs).loss
        engine.backward(loss)
        engine.step()
        losses.append(float(loss))
    stage = config["zero_optimization"]["stage"]
    report = {"rank": rank, "stage": stage, "losses": losses}
    if stage == 3:
        params = list(model.parameters())
        report["local"] = sum(p.ds_tensor.numel() for p in params)
        report["total"] = sum(p.ds_numel for p in params)
        engine.save_16bit_model(out, "model.bin")
    Path(out).mkdir(parents=True, exist_ok=True)
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["deepspeed_zero2", "deepspeed_zero3"])
def test_deepspeed_engine_trains_tiny_tarsier_on_two_cpu_processes(name, tiny_tarsier, data_dir, tmp_path):
    folder, model, _ = tiny_tarsier
    script = tmp_path / "engine.py"
    script.write_text(ENGINE)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(script), str(RECIPES / f"{name}.yaml"), str(folder), str(data_dir), str(tmp_path / "out")]
    import deepspeed

    # the repo (for tests.test_deepspeed) and the deepspeed this test imports
    env = dict(child_env(), PYTHONPATH=os.pathsep.join([str(REPO), str(Path(deepspeed.__file__).parents[1])]))
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-5000:]
    reports = [json.loads((tmp_path / "out" / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["rank"] for r in reports] == [0, 1]
    for report in reports:
        assert report["losses"][-1] < report["losses"][0] - 1.0, report["losses"]
    if name == "deepspeed_zero3":
        # parameters partitioned: each rank holds half of them (padded to the world size)
        for report in reports:
            assert abs(report["local"] / report["total"] - 0.5) < 0.01
        import torch

        saved = torch.load(tmp_path / "out" / "model.bin", weights_only=True)
        expected = model.state_dict()
        assert set(saved) == set(expected) - {"lm_head.weight"} or set(saved) == set(expected)
        assert all(saved[k].shape == expected[k].shape for k in saved)
