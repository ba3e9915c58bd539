"""Training-step time with the embeddings trained (`--train_embeddings true`, default) vs frozen (`false`).

Same model, same batch, one process, the two settings alternating: forward, backward and an AdamW step of
`--loss_head plain` (`TarsierSFTTrainer.compute_loss`). The model is the tiny recipe's shape (SmolLM2-135M's
49,152 x 576 tied embedding table with 2 decoder layers, a 2-layer CLIP tower on 32 px frames, 8 frames of 16
patches; built by `bench_loss_head.build`). Freezing the table removes its gradient and its AdamW update: 28M of
the 36M parameters.

    python benchmarks/bench_frozen_embeddings.py --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser

from bench_loss_head import build
from tarsier_hf.training.freezing import set_trainable_parts


def train_step(trainer, model, optimizer, batch) -> float:
    start = time.perf_counter()
    loss = trainer.compute_loss(model, {k: v.clone() for k, v in batch.items()})
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start



@dataclass
class BenchArgs:
    repeats: int = field(default=7, metadata={"help": "timed rounds (median reported)"})

def main():
    (args,) = HfArgumentParser(BenchArgs, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
                               ).parse_args_into_dataclasses()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        model, batch, trainers = build(tmp)
        trainer = trainers["plain"]
        settings = {}
        for trained in (True, False):
            set_trainable_parts(model, True, True, True, train_embeddings=trained)
            params = [p for p in model.parameters() if p.requires_grad]
            # lr 0: the weights (and so every step's work) stay the same across the alternating runs
            settings[trained] = (params, torch.optim.AdamW(params, lr=0.0))
        counts = {trained: sum(p.numel() for p in params) for trained, (params, _) in settings.items()}
        times = {True: [], False: []}
        for repeat in range(args.repeats + 1):  # the first round warms up
            for trained in ((True, False) if repeat % 2 == 0 else (False, True)):
                params, optimizer = settings[trained]
                set_trainable_parts(model, True, True, True, train_embeddings=trained)
                seconds = train_step(trainer, model, optimizer, batch)
                if repeat:
                    times[trained].append(seconds)
    trained, frozen = statistics.median(times[True]), statistics.median(times[False])
    print(f"\nbatch {batch['input_ids'].shape[0]} x {batch['input_ids'].shape[1]} positions, forward + backward + "
          f"AdamW step, --loss_head plain, median of {args.repeats}, 2 threads\n")
    print("| embeddings | trainable parameters | seconds / step | speed-up |")
    print("|---|---|---|---|")
    print(f"| trained (default) | {counts[True] / 1e6:.1f}M | {trained:.2f} | 1.00x |")
    print(f"| frozen (`--train_embeddings false`) | {counts[False] / 1e6:.1f}M | {frozen:.2f} | {trained / frozen:.2f}x |")


if __name__ == "__main__":
    main()
