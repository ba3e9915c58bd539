"""A training run's output folder: the records of what it skipped (`RunRecords`) and, once trained, the final save
(`save_run`: the weights in full, the processor, the code files, the model card, the checks, the push)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from tarsier_hf import families
from tarsier_hf.hub.checkpoint import check_checkpoint, copy_code_files
from tarsier_hf.hub.model_card import render_model_card
from tarsier_hf.hub.publish import push_to_hub as publish
from tarsier_hf.training.model_builder import save_tarsier

logger = logging.getLogger(__name__)


def count_lines(path: str) -> int:
    """Lines of a text file (0 when it does not exist): the entries of a JSONL record (`bad_rows.jsonl`,
    `skipped_samples.jsonl`)."""
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as handle:
        return sum(1 for _ in handle)


@dataclass
class RunRecords:
    """The records of a run, which its model card counts: the bad rows (`bad_rows`, found anew before or while
    training, `tarsier_hf.training.row_checks`) and the samples the collator skipped (`skipped_samples`)."""

    bad_rows: str
    skipped_samples: str

    @classmethod
    def in_folder(cls, output_dir: str) -> RunRecords:
        return cls(os.path.join(output_dir, "bad_rows.jsonl"), os.path.join(output_dir, "skipped_samples.jsonl"))

    def start(self, is_main_process: bool, keep_skipped_samples: bool) -> None:
        """Remove an earlier run's records (on the main process). A resumed map-style run keeps its skipped samples:
        the Trainer skips the batches before the checkpoint without collating them (a stream is read and collated
        again up to it, so its record starts anew)."""
        if not is_main_process:
            return
        for record in [self.bad_rows] + ([] if keep_skipped_samples else [self.skipped_samples]):
            if os.path.exists(record):
                os.remove(record)

    def counts(self) -> dict[str, int]:
        """`{"skipped_rows": N, "skipped_samples": M}`, for the model card."""
        return {"skipped_rows": count_lines(self.bad_rows), "skipped_samples": count_lines(self.skipped_samples)}


def save_run(
    trainer, model, processor, records: RunRecords, *, base_model: str, datasets: list[str], training: dict,
    use_peft: bool, merge_lora: bool, push_to_hub: bool,
) -> str:
    """
    Save a trained run into `trainer.args.output_dir` and return that folder.

    The weights are saved in full (FSDP's sharded checkpoints are gathered into a `FULL_STATE_DICT`) with the trainer
    state; the main process then adds the processor, the LoRA adapter merged into `merged/` (`merge_lora`) or the
    remote-code files (Tarsier; a Qwen2-VL folder loads with transformers' own class), the model card (`base_model`,
    `datasets`, `training` plus the `records` counts), checks the folder (`check_checkpoint`) and pushes it to
    `hub_model_id` (or the folder's name) when `push_to_hub`.

    `model` is the model as built (before the trainer wrapped it in adapters), `trainer.model` the one trained.
    """
    args = trainer.args
    if trainer.is_fsdp_enabled:  # SHARDED_STATE_DICT checkpoints stay sharded; the final folder is gathered in full
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(args.output_dir)
    trainer.save_state()  # trainer_state.json (log history, global step) next to the final weights

    output_dir = args.output_dir
    if trainer.is_world_process_zero():
        processor.save_pretrained(output_dir)
        if use_peft:
            if merge_lora:
                merged = trainer.model.merge_and_unload()
                save_tarsier(merged, processor, os.path.join(output_dir, "merged"))
        elif model.config.model_type == families.TARSIER.model_type:  # Qwen2-VL loads with transformers' own class
            copy_code_files(output_dir)
        card = render_model_card(
            Path(output_dir).name if args.hub_model_id is None else args.hub_model_id, base_model, datasets,
            training={**training, **records.counts()}, is_adapter=use_peft,
            qwen2_vl=model.config.model_type == families.QWEN2_VL.model_type,
        )
        (Path(output_dir) / "README.md").write_text(card, encoding="utf-8")
        check_checkpoint(output_dir)
        if push_to_hub:
            repo_id = args.hub_model_id or Path(output_dir).name
            plan = publish(output_dir, repo_id, private=args.hub_private_repo, token=args.hub_token)
            logger.info("pushed %d files to %s", len(plan.files), plan.commit_url)
    trainer.accelerator.wait_for_everyone()
    return output_dir
