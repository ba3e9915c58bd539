"""Prompt pools: the prompts a user turn without text draws from, per task (paper section 3.2.1: the prompt defines
the output format)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import yaml

# Prompt pools per task. Pools for other tasks come from a JSON/YAML file (`--prompt_pools`), merged over these.
DEFAULT_PROMPT_POOLS: dict[str, list[str]] = {
    "caption_short": [
        "Describe the video in one sentence.",
        "Summarize what happens in the video in a single sentence.",
        "Give a one-sentence caption of this video.",
    ],
    "caption_detailed": [
        "Describe the video in detail.",
        "Give a detailed description of what happens in the video.",
        "Describe the actions and events of this video step by step.",
    ],
    "image_caption": ["Describe the image.", "What does this image show?"],
    "action_recognition": [
        "What action is being performed in the video? Answer with a short phrase.",
        "Name the action shown in the video.",
    ],
    "video_qa": ["Give a short answer to the following question."],
}


def load_prompt_pools(path: str | os.PathLike | None) -> dict[str, list[str]]:
    """Default pools, updated with a `{task: [prompt, ...]}` JSON or YAML file when `path` is given."""
    pools = {task: list(prompts) for task, prompts in DEFAULT_PROMPT_POOLS.items()}
    if path is None:
        return pools
    text = Path(path).read_text(encoding="utf-8")
    if str(path).endswith((".yaml", ".yml")):
        loaded = yaml.safe_load(text)
    else:
        loaded = json.loads(text)
    if not isinstance(loaded, dict) or not all(
        isinstance(v, list) and v and all(isinstance(p, str) for p in v) for v in loaded.values()
    ):
        raise ValueError(f"{path}: prompt pools must map each task name to a non-empty list of prompt strings")
    pools.update(loaded)
    return pools


def apply_prompt_pool(row: dict, pools: dict[str, list[str]], rng: random.Random, resample: bool) -> dict:
    """Give user turns without text a prompt from the pool of `row["task"]` (or replace it when `resample`)."""
    task = row.get("task")
    pool = pools.get(task) if task is not None else None
    for message in row["messages"]:
        if message["role"] != "user":
            continue
        texts = [i for i, item in enumerate(message["content"]) if item["type"] == "text"]
        if not texts:
            if pool is None:
                raise ValueError(
                    f"row idx={row.get('idx')}: a user turn has no prompt text and task {task!r} has no prompt pool "
                    f"(known: {sorted(pools)}); add the prompt or a pool with --prompt_pools"
                )
            message["content"].append({"type": "text", "text": rng.choice(pool)})
        elif resample and pool is not None:
            message["content"][texts[0]] = {"type": "text", "text": rng.choice(pool)}
        break  # the first user turn sets the task's output format
    return row
