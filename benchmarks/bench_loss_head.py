"""Training-step time of `TarsierSFTTrainer.compute_loss`: TRL's fused chunked LM head vs `--loss_head plain`.

Same model, same batch, one process, the two heads alternating: forward + backward of the loss. The model has
the tiny recipe's shape (SmolLM2-135M's 49,152-token vocabulary and width with 2 decoder layers, a 2-layer CLIP
tower on 32 px frames, 8 frames of 16 patches) and random weights (timing does not depend on their values).

    python benchmarks/bench_loss_head.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser

from configuration_tarsier import TarsierConfig
from modeling_tarsier import TarsierForConditionalGeneration
from processing_tarsier import TarsierProcessor
from tarsier_hf.tiny_recipe.local_llm import materialize_smollm2
from tarsier_hf.training.trainer import TarsierSFTConfig, TarsierSFTTrainer


BATCH, FRAMES, PROMPT, ANSWER = 8, 8, 24, 70


def build(tmp: str):
    from datasets import Dataset
    from transformers import AutoConfig, AutoTokenizer

    llm = materialize_smollm2()
    tokenizer = AutoTokenizer.from_pretrained(llm)
    processor = TarsierProcessor.from_parts(tokenizer, "clip", chat_template="chatml", image_size=32, patch_size=8,
                                            use_frame_separators=False)
    text_config = AutoConfig.from_pretrained(llm).to_dict()
    text_config.update(num_hidden_layers=2, vocab_size=len(tokenizer))
    config = TarsierConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=128, intermediate_size=512,
                           num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8),
        text_config=text_config, use_frame_separators=False, vision_feature_layer=-1,
        image_token_id=processor.image_token_id, video_token_id=processor.video_token_id,
        image_newline_token_id=processor.image_newline_token_id, frame_end_token_id=processor.frame_end_token_id,
    )
    torch.manual_seed(0)
    model = TarsierForConditionalGeneration(config).train()

    generator = torch.Generator().manual_seed(0)
    visual = [processor.image_token_id] * (16 * FRAMES)
    rows = [torch.randint(0, 49152, (PROMPT,), generator=generator).tolist()[:1] + visual
            + torch.randint(0, 49152, (PROMPT + ANSWER,), generator=generator).tolist() for _ in range(BATCH)]
    input_ids = torch.tensor(rows)
    labels = torch.full_like(input_ids, -100)
    labels[:, -ANSWER:] = input_ids[:, -ANSWER:]
    batch = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=labels,
                 pixel_values=torch.randn(BATCH * FRAMES, 3, 32, 32, generator=generator),
                 num_frames=torch.full((BATCH,), FRAMES))

    trainers = {}
    for head in ("fused", "plain"):
        args = TarsierSFTConfig(output_dir=f"{tmp}/{head}", use_cpu=True, bf16=False, report_to="none",
                                loss_head=head, remove_unused_columns=False,
                                dataset_kwargs={"skip_prepare_dataset": True})
        trainers[head] = TarsierSFTTrainer(model=model, args=args, train_dataset=Dataset.from_list([{"x": 0}]),
                                           processing_class=processor, data_collator=lambda rows: rows)
    return model, batch, trainers


def step_seconds(trainer, model, batch) -> tuple[float, float]:
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    loss = trainer.compute_loss(model, {k: v.clone() for k, v in batch.items()})
    loss.backward()
    return time.perf_counter() - start, loss.item()



@dataclass
class BenchArgs:
    repeats: int = field(default=5, metadata={"help": "timed rounds (median reported)"})

def main():
    (args,) = HfArgumentParser(BenchArgs, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
                               ).parse_args_into_dataclasses()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        model, batch, trainers = build(tmp)
        times = {"fused": [], "plain": []}
        losses = {}
        for head in trainers:  # warm-up
            step_seconds(trainers[head], model, batch)
        for repeat in range(args.repeats):
            for head in (("fused", "plain") if repeat % 2 == 0 else ("plain", "fused")):
                seconds, losses[head] = step_seconds(trainers[head], model, batch)
                times[head].append(seconds)
    assert abs(losses["fused"] - losses["plain"]) < 1e-4 * max(1.0, abs(losses["fused"])), losses
    fused, plain = statistics.median(times["fused"]), statistics.median(times["plain"])
    positions = batch["input_ids"].shape[1]
    print(f"\nbatch {BATCH} x {positions} positions ({ANSWER} labelled per sample), vocab 49,152, forward + backward, "
          f"median of {args.repeats}, 2 threads; losses equal ({losses['plain']:.5f})\n")
    print("| loss head | seconds / step | speed-up |")
    print("|---|---|---|")
    print(f"| TRL fused chunked (default) | {fused:.2f} | 1.00x |")
    print(f"| plain at labelled positions (`--loss_head plain`) | {plain:.2f} | {fused / plain:.2f}x |")


if __name__ == "__main__":
    main()
