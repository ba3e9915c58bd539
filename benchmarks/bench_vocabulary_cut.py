"""Training-step time of the tiny recipe with SmolLM2's full 49,152-token vocabulary vs the vocabulary cut to
DREAM-S text (`tarsier_hf.tiny_recipe.vocabulary`, what `python -m tarsier_hf.tiny_recipe` trains).

Both models are built exactly as the recipe's stage 1 builds them (`make_language_model`: SmolLM2-135M-Instruct cut
to 2 layers, with and without the vocabulary cut; the CLIP tower of `recipes/tiny/vision_tower.json` on 96 px
frames pooled to one feature per frame; frozen tower and embeddings), and fed the same real batch: 8 stage-2
conversations of a freshly generated DREAM-S set, 8 uniformly sampled frames each, through the recipe's collator.
A step is `TarsierSFTTrainer.compute_loss` (`--loss_head plain`), backward and an AdamW update (learning rate 0, so
every round does the same work); the two models alternate, medians are reported.

    python benchmarks/bench_vocabulary_cut.py --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

from tarsier_hf.dream_s import BuildConfig, build_dataset
from tarsier_hf.tiny_recipe.phases import RECIPES
from tarsier_hf.tiny_recipe.stages import make_language_model
from tarsier_hf.training.collator import TarsierVideoCollator
from tarsier_hf.training.conversation_dataset import ConversationDataset
from tarsier_hf.training.dataset_spec import DatasetSpec
from tarsier_hf.training.freezing import set_trainable_parts
from tarsier_hf.training.model_builder import build_from_parts
from tarsier_hf.training.trainer import TarsierSFTConfig, TarsierSFTTrainer
from frame_sampling_tarsier import UniformSampling


@dataclass
class BenchArgs:
    repeats: int = field(default=7, metadata={"help": "timed rounds (median reported)"})
    batch_size: int = field(default=8, metadata={"help": "conversations per step (the recipe's)"})


def build(llm: Path, data: Path, tmp: str, batch_size: int, bf16: bool = False):
    from datasets import Dataset

    model, processor = build_from_parts(str(RECIPES / "vision_tower.json"), str(llm), chat_template="chatml",
                                        use_frame_separators=False, vision_feature_layer=-1, vision_feature_pooling=3)
    set_trainable_parts(model, train_vision_tower=False, train_projector=True, train_language_model=True,
                        train_embeddings=False)
    model.train()
    rows = ConversationDataset([DatasetSpec(str(data / "stage2.jsonl"), str(data), "train")], seed=0)
    collator = TarsierVideoCollator(processor, frame_sampling=UniformSampling(8), on_too_long="error")
    batch = collator([rows[i] for i in range(batch_size)])
    for key in ("skipped_samples", "skipped_too_long"):
        batch.pop(key)
    args = TarsierSFTConfig(output_dir=tmp, use_cpu=True, bf16=bf16, report_to="none", loss_head="plain",
                            remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True})
    trainer = TarsierSFTTrainer(model=model, args=args, train_dataset=Dataset.from_list([{"x": 0}]),
                                processing_class=processor, data_collator=lambda rows: rows)
    params = [p for p in model.parameters() if p.requires_grad]
    return model, batch, trainer, torch.optim.AdamW(params, lr=0.0)


def step_seconds(model, batch, trainer, optimizer) -> tuple[float, float]:
    start = time.perf_counter()
    loss = trainer.compute_loss(model, {k: v.clone() for k, v in batch.items()})
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start, loss.item()


def alternate(setups: dict, repeats: int) -> tuple[dict, dict]:
    """Median step seconds and last loss of each set-up, the set-ups taking turns (order flipped every round) after
    one warm-up round."""
    times = {name: [] for name in setups}
    losses = {}
    for repeat in range(repeats + 1):  # the first round warms up
        for name in (list(setups) if repeat % 2 == 0 else list(setups)[::-1]):
            seconds, losses[name] = step_seconds(*setups[name])
            if repeat:
                times[name].append(seconds)
    return {name: statistics.median(t) for name, t in times.items()}, losses


def main():
    (args,) = HfArgumentParser(BenchArgs, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
                               ).parse_args_into_dataclasses()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        build_dataset(BuildConfig(out=str(data), seed=0, num_train=40, num_test=2, max_subjects=1, num_workers=1))
        setups = {}
        for name, cut in (("full vocabulary", False), ("cut vocabulary", True)):
            llm = make_language_model(2, Path(tmp) / "parts", data if cut else None)
            torch.manual_seed(0)
            setups[name] = build(llm, data, f"{tmp}/{name}", args.batch_size)
        medians, losses = alternate(setups, args.repeats)
    full, cut = medians.values()
    rows = {name: setup[0].get_input_embeddings().weight.shape[0] for name, setup in setups.items()}
    batch = setups["cut vocabulary"][1]
    print(f"\nbatch {args.batch_size} x {batch['input_ids'].shape[1]} positions, "
          f"{int((batch['labels'] != -100).sum())} labelled; embedding rows {rows['full vocabulary']:,} vs "
          f"{rows['cut vocabulary']:,} (with the video tokens); compute_loss + backward + AdamW, median of "
          f"{args.repeats}, 2 threads; first-step losses {losses['full vocabulary']:.3f} vs {losses['cut vocabulary']:.3f}\n")
    print("| LM vocabulary | seconds / step | speed-up |")
    print("|---|---|---|")
    print(f"| SmolLM2's full vocabulary | {full:.3f} | 1.00x |")
    print(f"| cut to DREAM-S text | {cut:.3f} | {full / cut:.2f}x |")


if __name__ == "__main__":
    main()
