"""Training-step time of the tiny recipe in float32 vs `--bf16` (autocast to bfloat16) on the CPU.

The recipe's stage-2 model and batch exactly as `bench_vocabulary_cut.py` builds them (2-layer SmolLM2 cut to the
DREAM-S vocabulary, the 96 px CLIP tower pooled to one feature per frame, frozen tower and embeddings, 8 real
DREAM-S conversations of a freshly generated set). A step is `TarsierSFTTrainer.compute_loss` (`--loss_head
plain`, under the Trainer's mixed precision), backward and an AdamW update at learning rate 0; the two set-ups
alternate and medians are reported. bfloat16 matmuls are fast only where the CPU has them (AVX512-BF16 or AMX);
the script prints which flags this CPU reports.

    python benchmarks/bench_cpu_mixed_precision.py --repeats 7
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from transformers import HfArgumentParser

from bench_vocabulary_cut import BenchArgs, alternate, build
from tarsier_hf.dream_s import BuildConfig, build_dataset
from tarsier_hf.tiny_recipe.stages import make_language_model


def cpu_bf16_flags() -> str:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return ", ".join(f for f in ("avx512_bf16", "amx_bf16") if f in flags) or "none"


def main():
    (args,) = HfArgumentParser(BenchArgs, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
                               ).parse_args_into_dataclasses()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        build_dataset(BuildConfig(out=str(data), seed=0, num_train=40, num_test=2, max_subjects=1, num_workers=1))
        llm = make_language_model(2, Path(tmp) / "parts", data)
        setups = {}
        for name, bf16 in (("float32", False), ("bf16 autocast", True)):
            torch.manual_seed(0)
            setups[name] = build(llm, data, f"{tmp}/{name}", args.batch_size, bf16=bf16)
        medians, losses = alternate(setups, args.repeats)
    fp32, bf16 = medians.values()
    batch = setups["float32"][1]
    print(f"\nbatch {args.batch_size} x {batch['input_ids'].shape[1]} positions; compute_loss + backward + AdamW, "
          f"median of {args.repeats}, 2 threads; CPU bf16 flags: {cpu_bf16_flags()}; losses "
          f"{losses['float32']:.4f} vs {losses['bf16 autocast']:.4f}\n")
    print("| precision | seconds / step | speed-up |")
    print("|---|---|---|")
    print(f"| float32 | {fp32:.3f} | 1.00x |")
    print(f"| bf16 autocast | {bf16:.3f} | {fp32 / bf16:.2f}x |")


if __name__ == "__main__":
    main()
