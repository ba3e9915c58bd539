"""`SFTTrainer` for Tarsier: counts the samples the video collator skipped and logs them with the other metrics."""

from __future__ import annotations

import torch
from trl import SFTTrainer

SKIP_KEYS = ("skipped_samples", "skipped_too_long")


class TarsierSFTTrainer(SFTTrainer):
    """
    TRL's `SFTTrainer` (fused LM-head loss, metrics, saving) fed by `TarsierVideoCollator`.

    The collator reports per batch how many samples it replaced (unreadable media, or too long); those counts are
    popped here before the model sees the batch, summed over ranks and logged as running totals
    (`skipped_samples`, `skipped_too_long`) next to `loss` and `num_tokens`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skip_totals = {key: 0 for key in SKIP_KEYS}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        counts = [inputs.pop(key, None) for key in SKIP_KEYS]
        for key, count in zip(SKIP_KEYS, counts):
            if count is None:
                continue
            total = self.accelerator.gather_for_metrics(count.reshape(1).to(self.accelerator.device)).sum()
            if mode == "train":
                self.skip_totals[key] += int(total)
            self._metrics[mode][key] = [self.skip_totals[key] if mode == "train" else int(total)]
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = {k: v for k, v in inputs.items() if k not in SKIP_KEYS}
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)


def total_frames_in_batch(batch: dict[str, torch.Tensor]) -> int:
    """Frames in a collated batch (for throughput accounting)."""
    return int(batch["num_frames"].sum())
