"""Shared fixtures: paths to the shared data and a real small LLM (SmolLM2-135M-Instruct) materialised once."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TARSIER_SHARED", REPO.parent / "shared"))
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


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
    from tools.local_llm import materialize_smollm2

    return materialize_smollm2()
