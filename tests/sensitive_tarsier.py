"""A tiny Tarsier whose greedy answers depend on its input, for tests that compare answers.

The `tiny_tarsier` fixture's LLM is initialised with std 0.02, so it answers every prompt with the same
newlines: equal answers would then prove nothing. Re-drawing every weight matrix with a larger std makes the
answer change with the video, the image and the text.
"""

from __future__ import annotations

from pathlib import Path

import torch


def input_sensitive_copy(folder: Path, output: Path, std: float = 0.3, seed: int = 0) -> Path:
    """Load the Tarsier at `folder`, re-draw its weight matrices from N(0, std), save it with its code at `output`."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from tarsier_hf.training.model_builder import save_tarsier

    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim >= 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    save_tarsier(model, processor, output)
    return output
