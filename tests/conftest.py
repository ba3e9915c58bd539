"""Shared fixtures: paths to the shared data and a real small LLM (SmolLM2-135M-Instruct) materialised once."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.training_runs import run_checked, sft_args

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TARSIER_SHARED", REPO.parent / "shared"))


def pytest_configure(config):
    """eval/ is installed as `tarsier_hf.eval` (setup.cfg `package_dir`), which only an install of this checkout
    provides: refuse to test another checkout's eval/ (an environment installed from elsewhere) or none."""
    try:
        import tarsier_hf.eval
    except ImportError as error:
        pytest.exit(f"tarsier_hf.eval is not importable ({error}): run `pip install -e .` in {REPO}", returncode=4)
    where = Path(tarsier_hf.eval.__file__).resolve().parent
    if where != REPO / "eval":
        pytest.exit(f"tarsier_hf.eval comes from {where}, not {REPO / 'eval'}: run `pip install -e .` in {REPO}",
                    returncode=4)


def console_script(name: str) -> str:
    """The path of an installed command (`transformers`, `accelerate`) of the running interpreter's environment,
    so the tests work from `.venv/bin/python -m pytest` without an activated virtual environment."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else name


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED}: the shared data folder is missing (set TARSIER_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def dream1k_path(shared_dir) -> Path:
    return shared_dir / "data" / "DREAM-1K.jsonl"


@pytest.fixture(scope="session")
def demo_video(shared_dir) -> Path:
    return shared_dir / "data" / "videos" / "demo_test.mp4"


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """A plain transformers folder of SmolLM2-135M-Instruct (real weights, tokenizer and chat template)."""
    from tarsier_hf.tiny_recipe.local_llm import materialize_smollm2

    return materialize_smollm2()


def wait_until_healthy(server, port: int, log: Path, name: str, timeout: float) -> str:
    """Poll `http://127.0.0.1:PORT/health` until it answers 200 (at most `timeout` s); returns the `/v1` base URL.
    Fails the test with the server's log when it exits or never answers."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            pytest.fail(f"{name} exited ({server.returncode}): {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return f"http://127.0.0.1:{port}/v1"
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.kill()
            pytest.fail(f"{name} not ready after {timeout:.0f} s: {log.read_text()[-2000:]}")
        time.sleep(0.3)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def judge_server(smollm2_dir, tmp_path_factory):
    """A real OpenAI-compatible judge: `transformers serve` with SmolLM2 on 127.0.0.1; yields the `/v1` base URL."""
    import subprocess

    port = _free_port()
    log = tmp_path_factory.mktemp("judge") / "serve.log"
    # One intra-op thread: torch's default pool oversubscribes 2 shared cores and generation gets ~10x slower.
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    with open(log, "w") as handle:
        server = subprocess.Popen(
            [console_script("transformers"), "serve", str(smollm2_dir), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
            stdout=handle, stderr=subprocess.STDOUT, env=env,
        )
    try:
        yield wait_until_healthy(server, port, log, "transformers serve", 180)
    finally:
        server.terminate()
        try:
            server.wait(timeout=5)  # uvicorn waits for requests still generating; do not wait for them
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# -- a tiny Tarsier and colour clips (training, scoring and inference tests) ------------------------------------


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """Four single-colour clips, one corrupt and one missing file, and `good.jsonl` / `with_bad.jsonl`."""
    from tests.colour_clips import write_colour_clips

    return write_colour_clips(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def parts_dir(tmp_path_factory, smollm2_dir) -> Path:
    """A tiny random llama with the SmolLM2 tokenizer and a tiny CLIP vision config."""
    import json

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("parts")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    vision = {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 2, "image_size": 28, "patch_size": 14}
    (root / "vision.json").write_text(json.dumps(vision))
    return root


@pytest.fixture(scope="session")
def tiny_tarsier(parts_dir, tmp_path_factory):
    """`(folder, model, processor)` of a tiny Tarsier built from parts and saved with its code files (shared by
    the whole session: tests that train or change it take a `copy.deepcopy`)."""
    import torch

    from tarsier_hf.training.model_builder import build_from_parts, save_tarsier

    torch.manual_seed(0)
    model, processor = build_from_parts(str(parts_dir / "vision.json"), str(parts_dir / "llm"), chat_template="chatml")
    folder = tmp_path_factory.mktemp("tiny") / "tarsier"
    save_tarsier(model, processor, folder)
    return folder, model, processor


@pytest.fixture(scope="session")
def distributed_run(tiny_tarsier, data_dir, tmp_path_factory):
    """Two CPU processes through `accelerate launch` (DDP): 10 steps on the memorisation set plus two bad files.
    One run per session: test_training checks it, test_fsdp compares FSDP with it."""
    folder, _, _ = tiny_tarsier
    output_dir = tmp_path_factory.mktemp("runs") / "full"
    # `accelerate launch --cpu --num_processes 2` starts ONE process (its simple launcher expects mpirun); the
    # torchrun launcher behind --multi_gpu starts two, which then pick gloo on CPU because of --use_cpu true.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           str(REPO / "train_sft.py"),
           "--model_name_or_path", str(folder), "--max_steps", "10", "--save_steps", "5", "--learning_rate", "5e-3",
           "--warmup_steps", "0", "--gradient_checkpointing", "true", *sft_args(data_dir, output_dir)]
    result = run_checked(cmd, cwd=tmp_path_factory.mktemp("cwd"))
    return output_dir, result


# -- a tiny released Tarsier2 (Qwen2-VL) checkpoint ----------------------------------------------------------------


@pytest.fixture(scope="session")
def released_tarsier2(tmp_path_factory) -> dict:
    """A tiny random checkpoint in the released Tarsier2 layout (`tests/tarsier2_release.py`): the facts dict of
    `write_released_tarsier2`, its folder at `["path"]`. Shared by the session: copy the folder before changing it."""
    from tests.tarsier2_release import write_released_tarsier2

    return write_released_tarsier2(tmp_path_factory.mktemp("tarsier2") / "released")
