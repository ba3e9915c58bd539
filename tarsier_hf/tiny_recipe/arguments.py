"""Command-line arguments of the tiny recipe (`python -m tarsier_hf.tiny_recipe`, `tarsier-tiny-recipe`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TinyRecipeArguments:
    """Command-line arguments of `python -m tarsier_hf.tiny_recipe` (the defaults are the full recipe)."""

    output_dir: str = field(default="runs/tiny", metadata={"help": "Folder for data, checkpoints and results."})
    seed: int = field(default=0, metadata={"help": "Seed of the data and of training."})
    num_train: int = field(default=4000, metadata={"help": "Training clips (5 stage-1 and 3 stage-2 rows each)."})
    max_subjects: int = field(default=1, metadata={"help": "Most shapes per clip (DREAM-S allows 1-3)."})
    stage0_frames_per_clip: int = field(default=4, metadata={"help": "Frames of each train clip that stage 0 sees."})
    num_test: int = field(default=100, metadata={"help": "Held-out test clips (unseen colour/shape/action triples)."})
    video_size: int = field(default=96, metadata={"help": "Side of the generated videos in pixels."})
    num_frames: int = field(default=8, metadata={"help": "Frames per video in stage 2 and evaluation."})
    llm_layers: int = field(default=2, metadata={"help": "SmolLM2 decoder layers kept (1-30; 30 = the whole LLM)."})
    stage0_steps: int | None = field(default=None, metadata={"help": "Stage-0 optimiser steps (default: the YAML)."})
    stage1_steps: int | None = field(default=None, metadata={"help": "Stage-1 optimiser steps (default: the YAML)."})
    stage2_steps: int | None = field(default=None, metadata={"help": "Stage-2 optimiser steps (default: the YAML)."})
    batch_size: int | None = field(default=None, metadata={"help": "Per-step batch size (default: the YAML)."})
    dataloader_workers: int | None = field(default=None, metadata={"help": "Decoding processes (default: the YAML)."})
    cut_vocabulary: bool = field(default=True, metadata={
        "help": "Cut SmolLM2's 49,152-token vocabulary to the ~730 tokens the DREAM-S training text uses (the same "
                "tokens and logits on that text; a 68x smaller LM head)."})
    max_new_tokens: int = field(default=128, metadata={"help": "Generation limit of the evaluation."})
    eval_batch_size: int = field(default=10, metadata={"help": "Test videos per generate call."})
    ablations: bool = field(default=False, metadata={
        "help": "Also run w/o stage 1, w/o stage 2, single frame and tower from scratch (paper Table 6)."})
    quick: bool = field(default=False, metadata={"help": "Reduced run for CI: few clips, steps and layers."})
    keep_going: bool = field(default=False, metadata={"help": "Reuse finished phases found in --output-dir."})

    def __post_init__(self):
        if self.quick:
            self.num_train, self.num_test = min(self.num_train, 6), min(self.num_test, 4)
            self.llm_layers = 1
            # two steps: the warm-up gives the first step a learning rate of zero
            self.stage0_steps = self.stage0_steps or 2
            self.stage1_steps = self.stage1_steps or 2
            self.stage2_steps = self.stage2_steps or 2
            self.batch_size = self.batch_size or 2
            self.dataloader_workers = 0 if self.dataloader_workers is None else self.dataloader_workers
            self.num_frames = min(self.num_frames, 4)
            self.max_new_tokens = min(self.max_new_tokens, 16)
        if not 1 <= self.llm_layers <= 30:
            raise ValueError(f"--llm-layers must be in 1..30 (SmolLM2-135M has 30), got {self.llm_layers}")
        if self.num_train < 1 or self.num_test < 1:
            raise ValueError(f"--num-train and --num-test must be >= 1, got {self.num_train}/{self.num_test}")
