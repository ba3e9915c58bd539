"""Run a script under `accelerate launch` with accelerate's FSDP enabled on CPU processes (gloo): for tests only.

    accelerate launch --config_file recipes/accelerate/fsdp.yaml --num_processes 2 --mixed_precision no \\
        tests/accelerate_fsdp_cpu.py train_sft.py --use_cpu true --bf16 false ...

accelerate 1.15 turns an FSDP config into `DistributedType.FSDP` only for accelerator devices
(`AcceleratorState.__init__`, state.py: the MULTI_GPU / MULTI_NPU / ... list). On CPU processes the type stays
`MULTI_CPU`, `fsdp_plugin` stays None and the Trainer trains plain DDP without a word, so a CPU run of the FSDP
recipe would test nothing. This shim changes only that decision: every later step is accelerate's and torch's real
FSDP 2 (`fully_shard` per the recipe's wrap policy, full or sharded state dicts, DCP checkpoints) over gloo.
`test_accelerate_leaves_fsdp_off_on_cpu_without_the_shim` fails when accelerate lifts the gate (then drop this).

After accelerate's `fsdp2_prepare_model` every rank writes `fsdp_layout.rank{N}.json` in the working folder describing
what was built (FSDP units by class, activation-checkpointed layers, sharded parameters and this rank's share of
their elements), so tests can check the sharding itself rather than only its results (one file per rank: lines
that two ranks print to one stderr can interleave).
"""

from __future__ import annotations

import json
import runpy
import sys
from collections import Counter
from pathlib import Path

import accelerate.accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType

_accelerate_init = AcceleratorState.__init__


def _init_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _accelerate_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None:
        self.fsdp_plugin = fsdp_plugin
    # every AcceleratorState() call copies PartialState's MULTI_CPU back into the shared state: re-apply each time
    if getattr(self, "fsdp_plugin", None) is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP


def layout(model) -> dict:
    """What FSDP made of `model` on this rank."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    params = dict(model.named_parameters())
    sharded = {n: p for n, p in params.items() if isinstance(p, DTensor)}
    return {
        "rank": int(sys.modules["torch"].distributed.get_rank()),
        "fsdp_units": dict(Counter(type(m).__name__ for m in model.modules() if isinstance(m, FSDPModule))),
        "checkpointed_layers": sum(isinstance(m, CheckpointWrapper) for m in model.modules()),
        "parameters": len(params),
        "sharded_parameters": len(sharded),
        "trainable_parameters": sum(p.requires_grad for p in params.values()),
        "local_elements": sum(p.to_local().numel() for p in sharded.values()),
        "global_elements": sum(p.numel() for p in sharded.values()),
    }


_fsdp2_prepare_model = accelerate.accelerator.fsdp2_prepare_model


def _fsdp2_prepare_model_and_report(accelerator, model):
    model = _fsdp2_prepare_model(accelerator, model)
    report = layout(model)
    Path(f"fsdp_layout.rank{report['rank']}.json").write_text(json.dumps(report))
    return model


AcceleratorState.__init__ = _init_with_fsdp_on_cpu
accelerate.accelerator.fsdp2_prepare_model = _fsdp2_prepare_model_and_report

if __name__ == "__main__":
    script, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_path(script, run_name="__main__")
