"""The trained-and-evaluated runs of the tiny recipe: the full recipe and the ablations of paper Table 6."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RunSpec:
    """One trained-and-evaluated variant (the full recipe, or an ablation of Table 6)."""

    name: str
    stage0: bool = True  # False: the tower starts from random weights and trains in stages 1 and 2
    stage1: bool = True
    stage2: bool = True
    num_frames: int | None = None  # None: the recipe's frames

    @property
    def label(self) -> str:
        return {
            "full": "full recipe (stage 0 + 1 + 2)",
            "stage2_only": "w/o stage 1",
            "stage1_only": "w/o stage 2",
            "single_frame": "single-frame input",
            "scratch_tower": "tower from scratch (w/o stage 0)",
        }[self.name]


ABLATIONS = (RunSpec("stage2_only", stage1=False), RunSpec("stage1_only", stage2=False),
             RunSpec("single_frame", num_frames=1), RunSpec("scratch_tower", stage0=False))



def timed_phases(spec: RunSpec) -> list[str]:
    """The timer phases that trained a run's model (stage 1 only is the full run's stage-1 checkpoint)."""
    owner = "full" if spec.name == "stage1_only" else spec.name
    stages = [f"{owner}/stage{k}" for k, wanted in ((1, spec.stage1), (2, spec.stage2)) if wanted]
    return (["stage0"] if spec.stage0 else []) + stages
