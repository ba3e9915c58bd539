"""Which parameters train: the training policy of both video families, kept out of the model classes.

The parts, by family (`tarsier_hf.families`):

| part | Tarsier (`TarsierForConditionalGeneration`) | Qwen2-VL / Tarsier2 (`Qwen2VLForConditionalGeneration`) |
|---|---|---|
| vision tower | `model.vision_tower` | `model.visual` without its merger (`patch_embed`, `blocks`) |
| projector | `model.multi_modal_projector` | `model.visual.merger` (2x2 patch merge + MLP into the LM width) |
| language model | `model.language_model` (`embed_tokens`, `layers`, `norm`) | `model.language_model` (same names) |
| LM head | `lm_head` | `lm_head` |

The paper's recipe (and the default here) freezes the vision tower and the projector and trains the whole LLM.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import nn

logger = logging.getLogger(__name__)


@dataclass
class ModelParts:
    """The four parts of a video model; `projector` may be a submodule of `vision_tower` (Qwen2-VL's merger)."""

    vision_tower: nn.Module
    projector: nn.Module
    language_model: nn.Module
    lm_head: nn.Module


def model_parts(model: nn.Module) -> ModelParts:
    """The parts of a Tarsier or Qwen2-VL model (a peft model is read through its base model)."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    model_type = getattr(model.config, "model_type", None)
    if model_type == "tarsier":
        inner = model.model
        return ModelParts(inner.vision_tower, inner.multi_modal_projector, inner.language_model, model.lm_head)
    if model_type == "qwen2_vl":
        inner = model.model
        return ModelParts(inner.visual, inner.visual.merger, inner.language_model, model.lm_head)
    raise ValueError(f"{type(model).__name__} (model_type {model_type!r}): trainable parts are defined for Tarsier "
                     "and Qwen2-VL models only")


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def set_trainable_parts(
    model: nn.Module,
    train_vision_tower: bool = False,
    train_projector: bool = False,
    train_language_model: bool | int = True,
    train_embeddings: bool = True,
) -> dict[str, int]:
    """
    Choose which parameters of a Tarsier or Qwen2-VL model train (`requires_grad`).

    Args:
        model: a `TarsierForConditionalGeneration` or a `Qwen2VLForConditionalGeneration`.
        train_vision_tower: train the vision tower (Qwen2-VL: the ViT blocks and patch embedding, not the merger).
        train_projector: train the projector (Qwen2-VL: the vision tower's merger).
        train_language_model: `True` trains every LLM parameter (embeddings and LM head included), `False` none,
            and an integer `k` only the top `k` decoder layers plus the final norm and the LM head (the paper's
            Table 6 ablation trains the top 8).
        train_embeddings: `False` keeps the token embeddings and the LM head frozen whatever
            `train_language_model` says (for a small LLM the tied vocabulary table is most of the weights: freezing
            it shortens a CPU training step of the tiny recipe 1.33x and keeps the vocabulary as pretrained).

    Returns:
        Trainable parameter counts per part: `{"vision_tower", "projector", "language_model"}` (the LM head counts
        with the language model, once when tied to the embeddings).
    """
    parts = model_parts(model)
    language_model, lm_head = parts.language_model, parts.lm_head
    parts.vision_tower.requires_grad_(train_vision_tower)
    parts.projector.requires_grad_(train_projector)  # after the tower: Qwen2-VL's merger lies inside it
    tied = lm_head.weight is language_model.get_input_embeddings().weight
    if isinstance(train_language_model, bool):
        language_model.requires_grad_(train_language_model)
        lm_head.requires_grad_(train_language_model)
    else:
        layers = getattr(language_model, "layers", None)
        if layers is None:
            raise ValueError(f"{type(language_model).__name__} has no `layers`; cannot train only the top layers")
        if not 0 < train_language_model <= len(layers):
            raise ValueError(
                f"train_language_model={train_language_model}: expected 1..{len(layers)} layers (or a bool)"
            )
        language_model.requires_grad_(False)
        for layer in layers[-train_language_model:]:
            layer.requires_grad_(True)
        if getattr(language_model, "norm", None) is not None:
            language_model.norm.requires_grad_(True)
        lm_head.requires_grad_(True)
        if tied and train_embeddings:
            logger.warning("The LM head is tied to the input embeddings: training it also trains the embeddings.")
    if not train_embeddings:
        language_model.get_input_embeddings().requires_grad_(False)
        lm_head.requires_grad_(False)

    projector = _count(parts.projector)
    nested = any(module is parts.projector for module in parts.vision_tower.modules())
    return {
        "vision_tower": _count(parts.vision_tower) - (projector if nested else 0),
        "projector": projector,
        "language_model": _count(language_model) + (0 if tied else _count(lm_head)),
    }
