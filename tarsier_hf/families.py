"""The model families this project runs, told apart by the checkpoint itself, and the one loader for all of them.

| family | `config.json` | model class | processor |
|---|---|---|---|
| `tarsier` (Tarsier-7b/34b, the tiny recipe) | `model_type: "tarsier"` | `TarsierForConditionalGeneration` | `TarsierProcessor` |
| `qwen2_vl` (Tarsier2, any Qwen2-VL) | `model_type: "qwen2_vl"` | transformers' `Qwen2VLForConditionalGeneration` | `Tarsier2Processor` (torchvision-free) |
| `causal_lm` (a judge, a plain chat LM) | any causal LM | `AutoModelForCausalLM` | its tokenizer |

Released folders (`model_type: "llava"`, as bytedance/tarsier saves them) are refused with the `tarsier-convert`
command that turns them into the first two rows. By default this repository's classes load a checkpoint and none
of the code files saved in it runs; `trust_remote_code=True` imports the checkpoint's own files instead.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch


class UnsupportedCheckpointError(ValueError):
    """A checkpoint no family here can load; the message names the file, what it holds and what to do."""


class RemoteCodeRequiredError(UnsupportedCheckpointError):
    """A checkpoint that loads only with its own code files, asked for without `trust_remote_code`; the commands
    print the message (which names `--trust_remote_code true`) and exit 2 (`tarsier_hf.cli.consent_boundary`)."""

    def __init__(self, checkpoint):
        super().__init__(f"{checkpoint} loads only with the code files it ships, which run only with consent: "
                         "pass --trust_remote_code true (trust_remote_code=True in Python) to run them")


@contextmanager
def _consent(checkpoint):
    """transformers' refusal to run a checkpoint's code without `trust_remote_code` as `RemoteCodeRequiredError`."""
    try:
        yield
    except ValueError as error:
        if "contains custom code which must be executed" in str(error):
            raise RemoteCodeRequiredError(checkpoint) from None
        raise


@dataclass(frozen=True)
class ModelFamily:
    """A family of checkpoints: `name`, whether it takes videos, and the `model_type` its config declares."""

    name: str
    multimodal: bool
    model_type: str | None


TARSIER = ModelFamily("tarsier", multimodal=True, model_type="tarsier")
QWEN2_VL = ModelFamily("qwen2_vl", multimodal=True, model_type="qwen2_vl")
CAUSAL_LM = ModelFamily("causal_lm", multimodal=False, model_type=None)


def read_config(checkpoint: str | os.PathLike) -> tuple[dict, str]:
    """`(config dict, where it came from)` of a folder or Hub id (the Hub through huggingface_hub's cache)."""
    path = Path(checkpoint) / "config.json"
    if Path(checkpoint).is_dir():
        if not path.is_file():
            raise UnsupportedCheckpointError(f"{checkpoint}: no config.json (not a model folder)")
    else:
        if str(checkpoint).startswith((".", "/", "~")) or str(checkpoint).count("/") != 1:
            raise FileNotFoundError(f"{checkpoint}: no such checkpoint folder (and not a Hub id of the form org/name)")
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(str(checkpoint), "config.json"))
    try:
        return json.loads(path.read_text(encoding="utf-8")), str(path)
    except json.JSONDecodeError as error:
        raise UnsupportedCheckpointError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None


def detect_family(checkpoint: str | os.PathLike) -> ModelFamily:
    """The family of a checkpoint, from its `config.json`; released layouts and unknown models raise with advice."""
    config, where = read_config(checkpoint)
    model_type = config.get("model_type")
    if model_type == TARSIER.model_type:
        return TARSIER
    if model_type == QWEN2_VL.model_type:
        return QWEN2_VL
    text_type = (config.get("text_config") or {}).get("model_type")
    if model_type == "llava" and text_type in ("qwen2_vl", "llama", "mistral", "yi", "qwen2"):
        kind = "Tarsier2 (Qwen2-VL)" if text_type == "qwen2_vl" else "Tarsier"
        raise UnsupportedCheckpointError(
            f"{where}: a {kind} checkpoint in the release's layout (model_type 'llava', text_config.model_type "
            f"{text_type!r}); convert it first: tarsier-convert --model_name_or_path {checkpoint} "
            f"--output_dir {checkpoint}-hf")
    if model_type in ("qwen2_5_vl", "qwen3_vl"):
        raise UnsupportedCheckpointError(
            f"{where}: model_type {model_type!r} is not Qwen2-VL (Tarsier2 is Qwen2-VL; {model_type} samples time "
            "differently and is not supported here)")
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or "AutoModelForCausalLM" in (config.get("auto_map") or {}):
        return CAUSAL_LM  # the latter a causal LM whose code ships with it (loads with trust_remote_code)
    raise UnsupportedCheckpointError(
        f"{where}: model_type {model_type!r} is neither a Tarsier, a Qwen2-VL nor a causal LM checkpoint")


def resolve_dtype(name: str | torch.dtype | None, device: torch.device | str = "cpu") -> torch.dtype:
    """The one dtype rule: `auto` (or None) is bfloat16 on CUDA and float32 elsewhere; else a torch dtype name."""
    if isinstance(name, torch.dtype):
        return name
    if name in (None, "auto"):
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {name!r}")
    return dtypes[name]


def load_model_and_processor(
    checkpoint: str | os.PathLike, dtype: str | torch.dtype | None = "auto", device: str | torch.device = "cpu",
    trust_remote_code: bool = False, **model_kwargs,
):
    """Load any checkpoint of `detect_family` with its processor (tokenizer for a plain LM), in eval mode on `device`.

    Returns `(model, processor, family)`. `model_kwargs` go to `from_pretrained` (e.g. `attn_implementation`,
    `quantization_config`). A Qwen2-VL folder whose config asks for flash-attention (what the release's code
    saves) gets sdpa unless `attn_implementation` is given, and its M-RoPE positions follow the release
    (`tarsier_hf.mrope`).
    """
    family = detect_family(checkpoint)
    device = torch.device(device)
    checkpoint = str(checkpoint)
    model_kwargs["dtype"] = resolve_dtype(dtype, device)
    processor = load_processor(checkpoint, family, trust_remote_code)
    if family is TARSIER and not trust_remote_code:
        from modeling_tarsier import TarsierForConditionalGeneration

        model = TarsierForConditionalGeneration.from_pretrained(checkpoint, **model_kwargs)
    elif family is TARSIER:
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(checkpoint, trust_remote_code=True, **model_kwargs)
    elif family is QWEN2_VL:
        from transformers import Qwen2VLForConditionalGeneration

        from tarsier_hf.mrope import use_release_rope_index

        model_kwargs.setdefault("attn_implementation", "sdpa")
        model = Qwen2VLForConditionalGeneration.from_pretrained(checkpoint, **model_kwargs)
        use_release_rope_index(model)  # text after a video where Qwen2-VL and the release put it (tarsier_hf/mrope.py)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(checkpoint, trust_remote_code=trust_remote_code, **model_kwargs)
    if "quantization_config" not in model_kwargs and "device_map" not in model_kwargs:
        model = model.to(device)  # a quantised or dispatched model is already placed where it runs
    return model.eval(), processor, family


def load_processor(checkpoint: str | os.PathLike, family: ModelFamily | None = None, trust_remote_code: bool = False):
    """The processor of a checkpoint (its tokenizer for a plain LM), without loading the model.

    Tarsier: this repository's `TarsierProcessor`; Qwen2-VL: this repository's torchvision-free `Tarsier2Processor`
    (it reads the folder's tokenizer, chat template and pixel settings); with `trust_remote_code`, whatever the
    folder's own `auto_map` names.
    """
    family = family or detect_family(checkpoint)
    checkpoint = str(checkpoint)
    if family is CAUSAL_LM:
        from transformers import AutoConfig, AutoTokenizer

        with _consent(checkpoint):  # the config is where transformers refuses a model whose code ships with it
            AutoConfig.from_pretrained(checkpoint, trust_remote_code=trust_remote_code)
            return AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=trust_remote_code)
    if trust_remote_code:
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
    if family is TARSIER:
        from transformers import AutoConfig

        from configuration_tarsier import TarsierConfig
        from processing_tarsier import TarsierProcessor

        # the tokenizer loader reads config.json through AutoConfig: with "tarsier" registered to this repository's
        # class it resolves without running (or trusting) the checkpoint's own configuration_tarsier.py
        AutoConfig.register("tarsier", TarsierConfig, exist_ok=True)
        return TarsierProcessor.from_pretrained(checkpoint)
    from processing_tarsier2 import Tarsier2Processor

    return Tarsier2Processor.from_pretrained(checkpoint)


def frame_sampling_of(processor):
    """The default `FrameSampling` of a loaded processor (Tarsier's own, or its video processor's)."""
    owner = processor if hasattr(processor, "frame_sampling") else getattr(processor, "video_processor", None)
    if owner is None or not hasattr(owner, "frame_sampling"):
        raise UnsupportedCheckpointError(f"{type(processor).__name__} samples no video frames")
    return owner.frame_sampling


def default_frame_sampling(checkpoint: str | os.PathLike, trust_remote_code: bool = False):
    """The `FrameSampling` a checkpoint's processor uses when a run names none (Tarsier: 8 uniform frames; a
    converted Tarsier2 folder: the release's 16-frame `tarsier2` policy)."""
    return frame_sampling_of(load_processor(checkpoint, trust_remote_code=trust_remote_code))
