"""`SFTTrainer` for Tarsier: counts the samples the video collator skipped and logs them with the other metrics, and
publishes a checkpoint folder only once it is complete."""

from __future__ import annotations

import logging
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, rotate_checkpoints
from trl import SFTConfig, SFTTrainer

from tarsier_hf.training.loss import labelled_logits

logger = logging.getLogger(__name__)

SKIP_KEYS = ("skipped_samples", "skipped_too_long")
# Where a checkpoint is written before it is renamed to OUTPUT_DIR/checkpoint-N: a folder that neither the
# Trainer's checkpoint patterns (`checkpoint-*`, rotation and `get_last_checkpoint`) nor publishing (`.*`) see.
STAGING_DIR = ".checkpoint-in-progress"
LOSS_HEADS = ("fused", "plain")
# Parameter names of the vision tower and projector: Tarsier's, and Qwen2-VL's `visual.` (blocks and merger).
VISUAL_PARTS = ("vision_tower.", "multi_modal_projector.", "visual.")


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

    A checkpoint becomes visible only complete (`_save_checkpoint`): the Trainer writes it under `STAGING_DIR`
    and it is renamed to `OUTPUT_DIR/checkpoint-N` once every process has written its part, so a run killed
    mid-save leaves the previous checkpoints as they were and `last_complete_checkpoint` resumes from the newest.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skip_totals = {key: 0 for key in SKIP_KEYS}
        # this trainer's per-batch metrics, averaged into each log (`log`), and the input tokens of the training
        # batches the plain head has seen (TRL's `SFTTrainer.compute_loss` keeps the fused head's own)
        self.batch_metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self.plain_head_tokens = 0
        self._staging_dir: str | None = None  # set while a checkpoint is being written (`_save_checkpoint`)
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
            self.batch_metrics[mode][key] = [self.skip_totals[key] if mode == "train" else int(total)]
        if getattr(self.args, "loss_head", "fused") == "plain":
            return self._plain_head_loss(model, inputs, return_outputs, num_items_in_batch)
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """The Trainer's log plus this trainer's `batch_metrics` (skip counts; the plain head's `entropy`,
        `mean_token_accuracy`, `num_tokens`), each averaged over the batches since the last log, as TRL averages its
        own; `eval_`-prefixed in evaluation. Kept here because TRL adds to its per-batch metrics only through its
        private `_metrics`."""
        mode = "train" if self.model.training else "eval"
        prefix = "eval_" if mode == "eval" else ""
        logs.update({f"{prefix}{key}": sum(values) / len(values) for key, values in self.batch_metrics[mode].items()})
        self.batch_metrics[mode].clear()
        super().log(logs, start_time)

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None, tags=None, **kwargs):
        """The card `Trainer.push_to_hub` uploads: this project's (`tarsier_hf.hub.model_card`, the one
        `save_pretrained`, `train_sft.py` and `tarsier-publish` write) instead of TRL's, in `OUTPUT_DIR/README.md`."""
        from tarsier_hf.hub.model_card import card_details, render_model_card

        if not self.is_world_process_zero():
            return
        model = self.accelerator.unwrap_model(self.model)
        adapter = hasattr(model, "peft_config")
        base = model.get_base_model() if adapter else model
        config = base.config
        name = model_name or self.args.hub_model_id or os.path.basename(os.path.normpath(self.args.output_dir))
        card = render_model_card(
            name, base_model=getattr(config, "_name_or_path", None) or None,
            datasets=[dataset_name] if isinstance(dataset_name, str) else list(dataset_name or ()),
            training={"learning_rate": self.args.learning_rate, "max_steps": self.args.max_steps,
                      "per_device_train_batch_size": self.args.per_device_train_batch_size,
                      "world_size": self.args.world_size},
            is_adapter=adapter, details=card_details(config.to_dict()), qwen2_vl=config.model_type == "qwen2_vl",
        )
        with open(os.path.join(self.args.output_dir, "README.md"), "w", encoding="utf-8") as handle:
            handle.write(card)

    def _get_output_dir(self, trial) -> str:
        """The run folder, or the staging folder while a checkpoint is being written (the Trainer puts its
        `checkpoint-N` folder here)."""
        return self._staging_dir or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, written under `STAGING_DIR` and renamed into the run folder when complete.

        Rename, not a marker file: the Trainer's save writes files from every process and rotates old checkpoints
        before it returns, so only a folder that appears under its final name complete is safe for every reader
        (resuming, `get_last_checkpoint`, rotation, loading a checkpoint as a model). Rotation and the push of a
        checkpoint (`push_to_hub`) therefore run here, after the rename, on the published folder.
        """
        run_dir = self._get_output_dir(trial)
        staging = os.path.join(run_dir, STAGING_DIR)
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # what a killed save left
        self.accelerator.wait_for_everyone()
        self._staging_dir = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_dir = None
        self.accelerator.wait_for_everyone()  # every process has written its part
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        written, final = os.path.join(staging, name), os.path.join(run_dir, name)
        best = self.state.best_model_checkpoint
        if best is not None and os.path.abspath(best) == os.path.abspath(written):  # this checkpoint is the best
            self.state.best_model_checkpoint = final
            if self.args.should_save:
                self.state.save_to_json(os.path.join(written, "trainer_state.json"))
        if self.args.should_save:
            self._publish_checkpoint(written, final)
        self.accelerator.wait_for_everyone()
        if self.args.push_to_hub:  # the Trainer's own push was held back while the folder was staged
            self._push_from_checkpoint(final)

    def _publish_checkpoint(self, written: str, final: str) -> None:
        """Rename the complete checkpoint folder `written` (in the staging folder) to `final`, remove the staging
        folder, then rotate old checkpoints as the Trainer does."""
        staging = os.path.dirname(written)
        if os.path.exists(final):  # a checkpoint of this step from an earlier run: moved away, then replaced
            replaced = os.path.join(staging, f"replaced-{os.path.basename(final)}")
            os.replace(final, replaced)
            os.replace(written, final)
            shutil.rmtree(replaced)
        else:
            os.replace(written, final)
        os.rmdir(staging)
        rotate_checkpoints(output_dir=os.path.dirname(final), save_total_limit=self.args.save_total_limit,
                           best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """The Trainer's push of a checkpoint, deferred while it is staged (it uploads the folder in the
        background, which must be the published one)."""
        if self._staging_dir is None:  # while staged: none here, `_save_checkpoint` pushes the published folder
            super()._push_from_checkpoint(checkpoint_folder)

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
        metrics = self.batch_metrics[mode]
        metrics["entropy"].append((entropy_sum / num_valid).item() if num_valid > 0 else 0.0)
        metrics["mean_token_accuracy"].append((num_correct / num_valid).item() if num_valid > 0 else 0.0)
        if mode == "train":
            self.plain_head_tokens += int(inputs["attention_mask"].sum())
        metrics["num_tokens"] = [self.plain_head_tokens]
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


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest `checkpoint-N` of `output_dir` (None if there is none), warning about a checkpoint that was
    being written when a run stopped (left under `STAGING_DIR`, incomplete, not resumed from)."""
    staging = os.path.join(output_dir, STAGING_DIR)
    last = get_last_checkpoint(output_dir)
    for name in sorted(os.listdir(staging)) if os.path.isdir(staging) else []:
        logger.warning("%s is incomplete (a run stopped while writing it): resuming from %s instead",
                       os.path.join(staging, name), last or "scratch")
    return last
