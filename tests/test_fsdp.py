"""FSDP 2 through `accelerate launch --config_file recipes/accelerate/fsdp.yaml` on two CPU processes (gloo).

The recipe file is used as shipped; the launch only overrides what a CPU needs (`--num_processes 2
--mixed_precision no`, `--use_cpu true --bf16 false`). accelerate 1.15 silently turns an FSDP config into plain
DDP on CPU processes, so the script runs behind `tests/accelerate_fsdp_cpu.py`, which lifts only that gate and
prints each rank's FSDP layout. The unsharded reference is the session's `distributed_run` (tests/conftest.py, also checked by
tests/test_training.py): the same arguments under DDP, trained once.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.training_runs import child_env, run_checked, sft_args, trainer_state, weights

REPO = Path(__file__).resolve().parents[1]
FSDP_RECIPE = REPO / "recipes" / "accelerate" / "fsdp.yaml"
SHIM = REPO / "tests" / "accelerate_fsdp_cpu.py"


def _launch_fsdp(script_args, cwd, launch_args=()):
    for stale in Path(cwd).glob("fsdp_layout.rank*.json"):  # a previous launch's layouts
        stale.unlink()
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_RECIPE),
           "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", "0", *launch_args,
           str(SHIM), str(REPO / "train_sft.py"), *script_args]
    return run_checked(cmd, cwd=cwd)


def _layouts(cwd) -> list[dict]:
    """The layout every rank of the last launch in `cwd` wrote (tests/accelerate_fsdp_cpu.py)."""
    rows = sorted((json.loads(path.read_text()) for path in Path(cwd).glob("fsdp_layout.rank*.json")),
                  key=lambda r: r["rank"])
    assert [r["rank"] for r in rows] == [0, 1], rows
    return rows


def test_accelerate_leaves_fsdp_off_on_cpu_without_the_shim(tmp_path):
    """The measured reason for the shim: with the env `accelerate launch` sets for fsdp.yaml, a CPU process gets
    MULTI_CPU and no FSDP plugin (plain DDP); with the shim imported it gets FSDP 2."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    probe = textwrap.dedent(
        """
        import json, sys
        if sys.argv[1] == "shim":
            import tests.accelerate_fsdp_cpu  # noqa: F401
        from accelerate import Accelerator
        accelerator = Accelerator()
        plugin = getattr(accelerator.state, "fsdp_plugin", None)
        print(json.dumps({"type": str(accelerator.distributed_type), "plugin": plugin is not None,
                          "fsdp2": accelerator.is_fsdp2}))
        """
    )
    env = dict(child_env(), ACCELERATE_USE_FSDP="true", FSDP_VERSION="2", ACCELERATE_USE_CPU="true", LOCAL_RANK="0",
               RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               PYTHONPATH=str(REPO))
    seen = {}
    for mode in ("plain", "shim"):
        result = subprocess.run([sys.executable, "-c", probe, mode], cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        seen[mode] = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["plain"] == {"type": "DistributedType.MULTI_CPU", "plugin": False, "fsdp2": False}
    assert seen["shim"] == {"type": "DistributedType.FSDP", "plugin": True, "fsdp2": True}


@pytest.fixture(scope="module")
def fsdp_run(tiny_tarsier, data_dir, tmp_path_factory):
    """`distributed_run`'s arguments (10 steps, checkpoints at 5 and 10, gradient checkpointing) under fsdp.yaml."""
    folder, _, _ = tiny_tarsier
    output_dir = tmp_path_factory.mktemp("fsdp") / "full"
    args = ["--model_name_or_path", str(folder), "--max_steps", "10", "--save_steps", "5", "--learning_rate", "5e-3",
            "--warmup_steps", "0", "--gradient_checkpointing", "true", *sft_args(data_dir, output_dir)]
    cwd = tmp_path_factory.mktemp("cwd")
    _launch_fsdp(args, cwd=cwd)
    return output_dir, _layouts(cwd)


GENERATE = textwrap.dedent(
    """
    import json, sys
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out = {}
    for folder in sys.argv[2:]:
        model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        rows = []
        for video in sys.argv[1].split(","):
            conversation = [{"role": "user", "content": [{"type": "video", "path": video},
                                                         {"type": "text", "text": "Describe the video."}]}]
            text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
            inputs = processor(text=text, videos=[video], num_frames=3, add_special_tokens=False)
            with torch.no_grad():
                logits = model(**inputs).logits[0, -1]
                ids = model.generate(**inputs, max_new_tokens=8, do_sample=False)[0, inputs["input_ids"].shape[1]:]
            rows.append({"ids": ids.tolist(), "logits": logits.tolist()})
        out[folder] = {"module": type(model).__module__, "rows": rows}
    print(json.dumps(out))
    """
)


@pytest.mark.slow
def test_fsdp_run_shards_learns_and_saves_the_same_model_as_ddp(fsdp_run, distributed_run, tiny_tarsier, data_dir,
                                                                  tmp_path):
    output_dir, layouts = fsdp_run
    ddp_dir, _ = distributed_run
    folder, _, _ = tiny_tarsier

    # Really sharded: every parameter is a DTensor, each rank holds about half of the elements; one FSDP unit per
    # layer of the classes fsdp.yaml lists (2 LlamaDecoderLayer + 2 CLIPEncoderLayer), the rest in outer units.
    assert [r["rank"] for r in layouts] == [0, 1]
    for row in layouts:
        units = row["fsdp_units"]
        assert units["FSDPLlamaDecoderLayer"] == 2 and units["FSDPCLIPEncoderLayer"] == 2, units
        assert row["sharded_parameters"] == row["parameters"]
        assert abs(row["local_elements"] / row["global_elements"] - 0.5) < 0.01
    assert sum(r["local_elements"] for r in layouts) == layouts[0]["global_elements"]

    state = trainer_state(output_dir)
    logs = [entry for entry in state["log_history"] if "loss" in entry]
    assert state["global_step"] == 10 and len(logs) == 10
    losses = [entry["loss"] for entry in logs]
    assert np.mean(losses[-3:]) < losses[0] - 1.0, losses
    ddp_losses = [entry["loss"] for entry in trainer_state(ddp_dir)["log_history"] if "loss" in entry]
    np.testing.assert_allclose(losses, ddp_losses, rtol=1e-3)  # same data order, same updates

    # FSDP checkpoints (accelerate's save_fsdp_model / save_fsdp_optimizer), frozen tower kept out of the optimizer.
    checkpoint = output_dir / "checkpoint-5"
    assert (checkpoint / "pytorch_model_fsdp.bin").is_file() and (checkpoint / "optimizer.bin").is_file()
    assert not (checkpoint / "optimizer.pt").exists()
    optimizer_state = torch.load(checkpoint / "optimizer.bin", weights_only=False)["state"]
    before, after = weights(folder), weights(output_dir)
    assert optimizer_state and all("language_model" in name for name in optimizer_state)
    assert not any("vision_tower" in n or "multi_modal_projector" in n for n in optimizer_state)
    frozen = [k for k in before if "vision_tower" in k or "multi_modal_projector" in k]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)

    # A normal save_pretrained folder: same files and auto_map as the DDP run (no torch `_fsdp_*` modules).
    def files(path):
        return {p.name for p in Path(path).iterdir() if not p.name.startswith(("checkpoint-", "skipped"))}

    assert files(output_dir) == files(ddp_dir)
    config = json.loads((output_dir / "config.json").read_text())
    assert config["auto_map"] == json.loads((folder / "config.json").read_text())["auto_map"]
    assert config["architectures"] == ["TarsierForConditionalGeneration"]

    # The same weights as DDP up to float32 reduction order.
    ddp = weights(ddp_dir)
    assert after.keys() == ddp.keys()
    worst = max(float((after[k] - ddp[k]).abs().max()) for k in after)
    assert worst < 1e-4, worst

    videos = ",".join(str(data_dir / "videos" / f"{c}.mp4") for c in ("red", "blue"))
    script = tmp_path / "generate.py"
    script.write_text(GENERATE)
    report = json.loads(run_checked([sys.executable, str(script), videos, str(output_dir), str(ddp_dir)],
                             cwd=tmp_path).stdout.strip().splitlines()[-1])
    sharded, plain = report[str(output_dir)], report[str(ddp_dir)]
    assert sharded["module"].startswith("transformers_modules")
    for a, b in zip(sharded["rows"], plain["rows"]):
        assert a["ids"] == b["ids"] and len(a["ids"]) >= 1
        assert np.abs(np.array(a["logits"]) - np.array(b["logits"])).max() < 1e-3


@pytest.mark.slow
def test_fsdp_resumes_from_sharded_checkpoint_with_fsdp_activation_checkpointing(tiny_tarsier, data_dir, tmp_path):
    """SHARDED_STATE_DICT: one DCP shard per rank in every checkpoint; resuming from step 2 replays steps 3-4 of
    the uninterrupted run, and the final folder is still gathered in full. The memory lever of this run is
    `fsdp_activation_checkpointing` (accelerate wraps every listed layer) instead of `--gradient_checkpointing`."""
    folder, _, _ = tiny_tarsier
    launch = ("--fsdp_state_dict_type", "SHARDED_STATE_DICT", "--fsdp_activation_checkpointing", "true")

    def args(output_dir, *extra):
        return ["--model_name_or_path", str(folder), "--max_steps", "4", "--save_steps", "2", "--learning_rate",
                "5e-3", "--warmup_steps", "0", "--gradient_checkpointing", "false", *extra,
                *sft_args(data_dir, output_dir, data="good.jsonl")]

    straight = tmp_path / "straight"
    _launch_fsdp(args(straight), cwd=tmp_path, launch_args=launch)
    assert [row["checkpointed_layers"] for row in _layouts(tmp_path)] == [4, 4]  # 2 decoder + 2 encoder layers
    checkpoint = straight / "checkpoint-2"
    for part in ("pytorch_model_fsdp_0", "optimizer_0"):
        assert sorted(p.name for p in (checkpoint / part).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not (checkpoint / "model.safetensors").exists()

    resumed = tmp_path / "resumed"
    shutil.copytree(checkpoint, resumed / "checkpoint-2")
    _launch_fsdp(args(resumed, "--resume_from_checkpoint", "last"), cwd=tmp_path, launch_args=launch)

    def losses(path):
        return {e["step"]: e["loss"] for e in trainer_state(path)["log_history"] if "loss" in e}

    assert trainer_state(resumed)["global_step"] == 4
    assert [losses(resumed)[s] for s in (3, 4)] == pytest.approx([losses(straight)[s] for s in (3, 4)], rel=1e-5)
    final_straight, final_resumed = weights(straight), weights(resumed)  # FULL at the end despite SHARDED
    assert max(float((final_straight[k] - final_resumed[k]).abs().max()) for k in final_straight) < 1e-6


@pytest.mark.slow
def test_lora_under_fsdp_with_gradient_checkpointing(tiny_tarsier, data_dir, tmp_path):
    """LoRA on the LLM under FSDP (only the adapters train, every parameter sharded) with transformers' gradient
    checkpointing: the run learns and saves a plain adapter with trained weights."""
    folder, _, _ = tiny_tarsier
    output_dir = tmp_path / "lora"
    args = ["--model_name_or_path", str(folder), "--use_peft", "true", "--lora_r", "4", "--max_steps", "3",
            "--save_strategy", "no", "--learning_rate", "1e-2", "--gradient_checkpointing", "true",
            *sft_args(data_dir, output_dir, data="good.jsonl")]
    _launch_fsdp(args, cwd=tmp_path)
    for row in _layouts(tmp_path):
        assert 0 < row["trainable_parameters"] < row["parameters"] == row["sharded_parameters"]
    losses = [e["loss"] for e in trainer_state(output_dir)["log_history"] if "loss" in e]
    assert len(losses) == 3 and losses[-1] < losses[0], losses
    from safetensors.torch import load_file

    adapter = load_file(str(output_dir / "adapter_model.safetensors"))
    assert len(adapter) == 2 * 7 * 2  # lora_A + lora_B of q/k/v/o/gate/up/down in 2 decoder layers
    assert all("language_model" in k and "lora_" in k for k in adapter)
    assert all(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at 0: it trained


@pytest.mark.slow
def test_lora_with_fsdp_activation_checkpointing_is_refused(tiny_tarsier, data_dir, tmp_path):
    """peft 0.21 + accelerate's checkpoint wrappers save an adapter without tensors (measured): refused up front."""
    folder, _, _ = tiny_tarsier
    args = ["--model_name_or_path", str(folder), "--use_peft", "true", "--max_steps", "1",
            "--gradient_checkpointing", "false", *sft_args(data_dir, tmp_path / "lora", data="good.jsonl")]
    with pytest.raises(AssertionError, match="LoRA under FSDP with fsdp_activation_checkpointing saves an empty"):
        _launch_fsdp(args, cwd=tmp_path, launch_args=("--fsdp_activation_checkpointing", "true"))
