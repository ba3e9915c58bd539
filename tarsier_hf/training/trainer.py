"""`SFTTrainer` for Tarsier: counts the samples the video collator skipped and logs them with the other metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from trl import SFTConfig, SFTTrainer

from tarsier_hf.training.loss import labelled_logits

SKIP_KEYS = ("skipped_samples", "skipped_too_long")
LOSS_HEADS = ("fused", "plain")
VISUAL_PARTS = ("vision_tower.", "multi_modal_projector.")


@dataclass
class TarsierSFTConfig(SFTConfig):
    """TRL's `SFTConfig` plus the choice of LM-head loss (`--loss_head`)."""

    loss_head: str = field(
        default="fused",
        metadata={"help": "'fused': TRL's chunked LM head over every position (memory-lean on GPU). 'plain': the "
                  "LM head only at positions with a label + cross-entropy (much faster on CPU with a large vocab, "
                  "one process only)."},
    )

    vision_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Peak learning rate of the vision tower and projector (default: --learning_rate). A "
                  "tower trained from scratch next to a pretrained LLM wants a larger one."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.loss_head not in LOSS_HEADS:
            raise ValueError(f"--loss_head must be one of {LOSS_HEADS}, got {self.loss_head!r}")


class TarsierSFTTrainer(SFTTrainer):
    """
    TRL's `SFTTrainer` (fused LM-head loss, metrics, saving) fed by `TarsierVideoCollator`.

    `args.loss_head="plain"` swaps the fused head for the LM head at labelled positions only (`_plain_head_loss`),
    and `args.vision_learning_rate` gives the vision tower and projector their own peak learning rate.

    The collator reports per batch how many samples it replaced (unreadable media, or too long); those counts are
    popped here before the model sees the batch, summed over ranks and logged as running totals
    (`skipped_samples`, `skipped_too_long`) next to `loss` and `num_tokens`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skip_totals = {key: 0 for key in SKIP_KEYS}
        plugin = getattr(self.accelerator.state, "fsdp_plugin", None) if self.is_fsdp_enabled else None
        if plugin is not None and plugin.activation_checkpointing and hasattr(self.model, "peft_config"):
            # measured (peft 0.21, accelerate 1.15): the checkpoint wrappers rename the LoRA modules and
            # save_pretrained writes an adapter file with no tensors, silently
            raise ValueError(
                "LoRA under FSDP with fsdp_activation_checkpointing saves an empty adapter; use "
                "--gradient_checkpointing true instead (and fsdp_activation_checkpointing: false)"
            )

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
        if getattr(self.args, "loss_head", "fused") == "plain":
            return self._plain_head_loss(model, inputs, return_outputs, num_items_in_batch)
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def create_optimizer(self, model=None):
        """The Trainer's optimizer; with `vision_learning_rate`, the vision tower and projector get their own groups."""
        optimizer = super().create_optimizer(model)
        rate = getattr(self.args, "vision_learning_rate", None)
        if rate is None or getattr(self, "_vision_groups_done", False):
            return optimizer
        names = {id(p): n for n, p in (self.model if model is None else model).named_parameters()}
        visual_groups = []
        for group in list(optimizer.param_groups):
            visual = [p for p in group["params"] if any(k in names.get(id(p), "") for k in VISUAL_PARTS)]
            if visual:
                group["params"] = [p for p in group["params"] if all(p is not q for q in visual)]
                visual_groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": visual, "lr": rate})
        for group in visual_groups:
            optimizer.add_param_group(group)
        self._vision_groups_done = True
        return optimizer

    def _plain_head_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """
        Mean next-token cross-entropy with the LM head applied only where the next-token label is not -100.

        The fused head projects every position of `(batch, seq, hidden)` onto the vocabulary in chunks; on a CPU
        with a 49k vocabulary and mostly visual / prompt positions that dominates a step. Here the decoder output is
        gathered at the `N` labelled positions first, so the head costs `(N, hidden) x (hidden, vocab)`. The sum is
        divided like TRL's: by `num_items_in_batch` (all labelled tokens of the accumulated batch) when the Trainer
        gives it, else by `N`, and logs `entropy` / `mean_token_accuracy` / `num_tokens` the same way.
        """
        if self.accelerator.num_processes > 1:
            raise ValueError("--loss_head plain calls the unwrapped model and supports one process only; use "
                             "--loss_head fused with several processes")
        mode = "train" if self.model.training else "eval"
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        core = self.accelerator.unwrap_model(model)
        if hasattr(core, "get_base_model"):  # peft
            core = core.get_base_model()
        # the unwrapped model's forward is not the one accelerate wrapped in autocast: enter the Trainer's mixed
        # precision here, so --bf16 / --fp16 hold for this head as they do for the fused one
        with self.accelerator.autocast():
            logits, targets, mask = labelled_logits(core, inputs, labels)  # (N, vocab), (N,)
        loss_sum = F.cross_entropy(logits.float(), targets, reduction="sum")
        num_tokens = mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = loss_sum / torch.as_tensor(num_tokens, device=loss_sum.device).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes

        with torch.no_grad():
            log_probs = torch.log_softmax(logits.detach().float(), dim=-1)
            entropy_sum = -(log_probs.exp() * log_probs).sum()
            num_correct = (logits.detach().argmax(dim=-1) == targets).sum()
            num_valid = mask.sum()
        self._metrics[mode]["entropy"].append((entropy_sum / num_valid).item() if num_valid > 0 else 0.0)
        self._metrics[mode]["mean_token_accuracy"].append((num_correct / num_valid).item() if num_valid > 0 else 0.0)
        if mode == "train":
            self._total_train_tokens += int(inputs["attention_mask"].sum())
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        if return_outputs:
            with torch.no_grad():
                outputs = model(**inputs, use_cache=False)
            return loss, outputs
        return loss

    def _save(self, output_dir=None, state_dict=None):
        """Save as the model's own class, also under FSDP 2.

        `fully_shard` swaps the model's class for a dynamic `FSDP<Name>` subclass defined in torch's `_fsdp_init`
        module; `save_pretrained` would then write `_fsdp_init.FSDPTarsierForConditionalGeneration` into
        `config.auto_map` and copy torch's private `_fsdp_*.py` files, and the folder would not load. The weights
        come gathered in `state_dict`, so the class is switched back for the duration of the save. The gathered
        copies of tied weights no longer share storage, so the tied targets (`lm_head.weight` when embeddings are
        tied) are dropped here as `save_pretrained` does for an unsharded model.
        """
        from torch.distributed.fsdp import FSDPModule

        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if not isinstance(model, FSDPModule):
            return super()._save(output_dir, state_dict=state_dict)
        if state_dict is not None:
            tied = getattr(model, "all_tied_weights_keys", None) or {}
            state_dict = {k: v for k, v in state_dict.items() if tied.get(k) not in state_dict}
        sharded_class = type(model)
        model.__class__ = next(c for c in sharded_class.__mro__ if not issubclass(c, FSDPModule))
        try:
            return super()._save(output_dir, state_dict=state_dict)
        finally:
            model.__class__ = sharded_class

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = {k: v for k, v in inputs.items() if k not in SKIP_KEYS}
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

