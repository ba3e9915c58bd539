"""Helpers for tests that run the repo's commands in child processes (training launches, runners)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from safetensors.torch import load_file


def child_env() -> dict[str, str]:
    """The environment of a child process: offline, one thread per process, the installed repo (no PYTHONPATH,
    so a child sees what `pip install -e .` installed, as a user's shell does)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               TRANSFORMERS_NO_ADVISORY_WARNINGS="1", PYTHONWARNINGS="ignore")
    env.pop("PYTHONPATH", None)
    return env


def run_checked(cmd, cwd, timeout=400) -> subprocess.CompletedProcess:
    """Run `cmd` in `cwd`; an `AssertionError` with the tail of stderr when it fails."""
    result = subprocess.run(cmd, cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n{result.stderr[-6000:]}")
    return result


def sft_args(data_dir: Path, output_dir: Path, data: str = "with_bad.jsonl") -> list[str]:
    """The `train_sft.py` options every training test shares (CPU, random 2-3 frame segments, batch 2)."""
    return [
        "--dataset_paths", str(data_dir / data), "--video_roots", str(data_dir),
        "--frame_sampling", "random_segments", "--num_frames", "2", "3", "--output_dir", str(output_dir),
        "--per_device_train_batch_size", "2", "--bf16", "false", "--use_cpu", "true", "--logging_steps", "1",
        "--report_to", "none", "--dataloader_num_workers", "1", "--seed", "0", "--max_length", "256",
    ]


def trainer_state(output_dir) -> dict:
    return json.loads((Path(output_dir) / "trainer_state.json").read_text())


def weights(folder) -> dict:
    return load_file(str(Path(folder) / "model.safetensors"))
