"""The trainer and the tools under hostile input (issue #36): rows of the wrong shape, a kill in the middle of a
checkpoint save, remote-code files in the working directory, and what the commands and the model card report.
Every input is made here."""

from __future__ import annotations

import ast
import configparser
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.colour_clips import conversation_row
from tests.conftest import console_script
from tests.training_runs import child_env, trainer_state

REPO = Path(__file__).resolve().parents[1]


def _user(*items):
    return {"role": "user", "content": [{"type": "video", "path": "videos/red.mp4"}, *items]}


def _answer(text="Red."):
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


# (row, what its reason must say): fields of the wrong type, and texts that spell the processor's placeholders.
HOSTILE_ROWS = [
    ({"idx": 300, "messages": [{"role": "user", "content": 5}, _answer()]}, "TypeError"),
    ({"idx": 301, "messages": [{"role": ["user"], "content": "Describe."}, _answer()]}, "unknown role"),
    ({"idx": 302, "messages": [{"role": "user", "content": [{"type": "video", "path": {"file": "videos/red.mp4"}}]},
                               _answer()]}, "no file path"),
    ({**conversation_row("videos/red.mp4", "Red.", 303), "source": {"name": "colors"}}, "source is a dict"),
    ({"idx": 304, "messages": [{"role": "user", "content": [{"type": "video", "video": {"image_file": ["a.jpg", 3]}}]},
                               _answer()]}, "frame list"),
    ({"idx": 305, "messages": [_user({"type": "text", "text": "What happens in <video>?"}), _answer()]},
     "the text holds 2 <video> placeholders but 1 videos"),
    ({"idx": 306, "messages": [_user({"type": "text", "text": "Describe."}), _answer("It shows an <image>.")]},
     "the text holds 1 <image> placeholders but 0 images"),
]


@pytest.fixture
def hostile_file(tmp_path) -> tuple[Path, dict[int, str]]:
    """Two good rows (lines 1-2), then the hostile ones: the file and {line: expected reason}."""
    good = [conversation_row(f"videos/{c}.mp4", f"The screen stays {c}.", i) for i, c in enumerate(["red", "blue"])]
    path = tmp_path / "hostile.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in good + [row for row, _ in HOSTILE_ROWS]))
    return path, {3 + i: reason for i, (_, reason) in enumerate(HOSTILE_ROWS)}


def test_rows_of_wrong_types_or_spelling_placeholders_are_bad_rows(hostile_file, data_dir, tmp_path):
    """Each hostile row is reported with its file:line and reason, recorded and left out, up front and streamed."""
    from tarsier_hf.training.conversation_dataset import ConversationDataset, StreamingConversationDataset
    from tarsier_hf.training.dataset_spec import DatasetSpec
    from tarsier_hf.training.row_checks import BadRowsError

    path, expected = hostile_file
    spec = DatasetSpec(str(path), str(data_dir))
    log = tmp_path / "bad_rows.jsonl"
    dataset = ConversationDataset([spec], bad_rows_log=log)
    assert sorted(dataset[i]["idx"] for i in range(len(dataset))) == [0, 1]
    stream = StreamingConversationDataset([spec], bad_rows_log=tmp_path / "streamed.jsonl")
    assert [row["idx"] for row in stream] == [0, 1]
    for bad in (dataset.bad_rows, stream.bad_rows):
        assert [row.where for row in bad] == [f"{path}:{line}" for line in expected]
        for row in bad:
            assert expected[int(row.where.rsplit(":", 1)[1])] in row.reason, row
    assert [json.loads(line)["where"] for line in log.read_text().splitlines()] == [r.where for r in dataset.bad_rows]

    # --fail_fast: the whole list, in the error and in the record
    with pytest.raises(BadRowsError) as info:
        ConversationDataset([spec], fail_fast=True, bad_rows_log=tmp_path / "strict.jsonl")
    assert all(f"{path}:{line}:" in str(info.value) for line in expected)
    assert len((tmp_path / "strict.jsonl").read_text().splitlines()) == len(expected)


def test_a_pooled_prompt_that_spells_a_placeholder_is_refused(hostile_file, data_dir):
    from tarsier_hf.training.conversation_dataset import ConversationDataset
    from tarsier_hf.training.dataset_spec import DatasetSpec
    from tarsier_hf.training.prompt_pools import load_prompt_pools

    pools = {**load_prompt_pools(None), "caption_short": ["Describe <image> briefly."]}
    with pytest.raises(ValueError, match=r"caption_short.*1 <image> placeholders but 0 images"):
        ConversationDataset([DatasetSpec(str(hostile_file[0]), str(data_dir))], prompt_pools=pools)


def _sft(tiny_tarsier, data_dir, data, output_dir, *extra) -> list[str]:
    folder, _, _ = tiny_tarsier
    return [sys.executable, str(REPO / "train_sft.py"), "--model_name_or_path", str(folder),
            "--dataset_paths", str(data), "--video_roots", str(data_dir), "--num_frames", "2",
            "--output_dir", str(output_dir), "--learning_rate", "1e-3", "--per_device_train_batch_size", "2",
            "--bf16", "false", "--use_cpu", "true", "--report_to", "none", "--dataloader_num_workers", "0",
            "--max_length", "256", "--gradient_checkpointing", "false", "--logging_steps", "1", "--seed", "0", *extra]


# What train_sft.py prints once it has loaded a model (transformers' weight-loading bar, then its own count of the
# trainable parameters): absent from the log of a run stopped before the model, present in one that trained.
MODEL_LOADED = ("Loading weights", "trainable parameters before adapters")


def _run(cmd, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=400)


@pytest.mark.slow
def test_training_runs_skip_and_record_hostile_rows_and_fail_fast_lists_them(tiny_tarsier, data_dir, hostile_file,
                                                                             tmp_path):
    path, expected = hostile_file
    places = [f"{path}:{line}" for line in expected]
    for name, extra in (("map", ()), ("stream", ("--dataset_streaming", "true"))):
        result = _run(_sft(tiny_tarsier, data_dir, path, tmp_path / name, "--max_steps", "3",
                           "--save_strategy", "no", *extra), tmp_path)
        assert result.returncode == 0, result.stderr[-4000:]
        assert trainer_state(tmp_path / name)["global_step"] == 3
        recorded = [json.loads(line)["where"] for line in (tmp_path / name / "bad_rows.jsonl").read_text().splitlines()]
        assert recorded[:len(places)] == places and set(recorded) == set(places)  # a stream records each pass

    stopped = _run(_sft(tiny_tarsier, data_dir, path, tmp_path / "strict", "--max_steps", "3", "--fail_fast", "true"),
                   tmp_path)
    assert stopped.returncode != 0
    assert f"{len(expected)} bad training row(s) (--fail_fast)" in stopped.stderr
    assert all(f"{place}:" in stopped.stderr for place in places)
    assert [json.loads(line)["where"] for line in (tmp_path / "strict" / "bad_rows.jsonl").read_text().splitlines()] \
        == places
    assert not (tmp_path / "strict" / "trainer_state.json").exists()


# Run train_sft.py, pausing inside the save of checkpoint PAUSE_STEP (after the model, optimizer and scheduler are
# written, before the RNG and Trainer states) and saying so through the PAUSED file: the test kills it there.
PAUSE_IN_SAVE = """
import os, runpy, sys, time
from pathlib import Path

from tarsier_hf.training.trainer import TarsierSFTTrainer

save = TarsierSFTTrainer._save_optimizer_and_scheduler


def pause_inside_save(self, output_dir):
    save(self, output_dir)
    if self.state.global_step == int(os.environ["PAUSE_STEP"]):
        Path(os.environ["PAUSED"]).write_text(output_dir)
        time.sleep(600)


TarsierSFTTrainer._save_optimizer_and_scheduler = pause_inside_save
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_kill_during_a_checkpoint_save_resumes_from_the_previous_complete_checkpoint(tiny_tarsier, data_dir,
                                                                                        tmp_path):
    output_dir, paused = tmp_path / "run", tmp_path / "paused"
    (tmp_path / "pause_in_save.py").write_text(PAUSE_IN_SAVE)
    cmd = _sft(tiny_tarsier, data_dir, data_dir / "good.jsonl", output_dir, "--max_steps", "6", "--save_steps", "2")
    env = dict(child_env(), PAUSE_STEP="6", PAUSED=str(paused))
    with open(tmp_path / "killed.log", "w") as log:
        child = subprocess.Popen([sys.executable, str(tmp_path / "pause_in_save.py"), *cmd[1:]], cwd=tmp_path,
                                 env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while not paused.exists():
            assert child.poll() is None, (tmp_path / "killed.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "the run never reached the save of checkpoint-6"
            time.sleep(0.2)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    half = Path(paused.read_text())
    assert half.name == "checkpoint-6" and half.is_dir() and not (half / "trainer_state.json").exists()
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]

    resumed = _run(cmd + ["--resume_from_checkpoint", "last"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"{half} is incomplete" in resumed.stderr and "resuming from" in resumed.stderr
    assert resumed.stdout.count("'loss'") + resumed.stderr.count("'loss'") == 2  # steps 5 and 6 only
    state = trainer_state(output_dir)
    assert state["global_step"] == 6 and [e["step"] for e in state["log_history"] if "loss" in e] == list(range(1, 7))
    assert trainer_state(output_dir / "checkpoint-6")["global_step"] == 6
    assert not (output_dir / ".checkpoint-in-progress").exists()


def test_the_working_directory_cannot_shadow_the_library_remote_code(tmp_path):
    """`python -m` puts the working directory first on sys.path: started in a folder holding booby-trapped
    remote-code files (a downloaded checkpoint), the library's own modules are imported, with a warning."""
    from tarsier_hf.hub.checkpoint import CODE_FILES

    names = [Path(name).stem for name in CODE_FILES]  # the remote-code modules a Tarsier checkpoint carries
    trap = tmp_path / "checkpoint"
    trap.mkdir()
    for name in names:
        (trap / f"{name}.py").write_text(f"open({str(tmp_path / ('imported-' + name))!r}, 'w').close()\n")
    command = [sys.executable, "-m", "tarsier_hf.training.model_builder"]  # imports all four
    shadowed = _run(command, trap)
    assert shadowed.returncode == 0, shadowed.stderr[-3000:]
    assert not list(tmp_path.glob("imported-*"))
    for name in names:
        assert f"{trap / name}.py shadows the library's {name}" in shadowed.stderr
    at_home = _run(command, REPO)  # the dev workflow: the repo root holds the library's files themselves
    assert at_home.returncode == 0 and "shadows" not in at_home.stderr, at_home.stderr[-3000:]


def _console_scripts() -> dict[str, str]:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(line.replace(" ", "").split("=") for line in lines)


def _module_file(module: str) -> Path:
    parts = module.split(".")
    root, parts = (REPO / "eval", parts[2:]) if parts[:2] == ["tarsier_hf", "eval"] else (REPO, parts)
    return root.joinpath(*parts).with_suffix(".py")


def test_console_scripts_exit_zero_on_success(tiny_tarsier, tmp_path):
    """A console script passes what `main` returns to `sys.exit`: every `main` returns an exit status (an int, or
    None), and convert and publish, run as installed, exit 0 when they succeed."""
    for name, target in _console_scripts().items():
        module, function = target.split(":")
        tree = ast.parse(_module_file(module).read_text(encoding="utf-8"))
        main = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == function)
        assert main.returns is not None and ast.unparse(main.returns) in ("int", "None"), \
            f"{name}: {function}() returns {ast.unparse(main.returns) if main.returns else 'unannotated'}"

    folder, _, _ = tiny_tarsier
    runs = {
        "tarsier-convert": ["--input", str(folder), "--output", str(tmp_path / "released"), "--export"],
        "tarsier-publish": ["--folder", str(folder), "--repo_id", "someone/tiny", "--dry_run",
                            "--staging_dir", str(tmp_path / "upload")],
    }
    for name, args in runs.items():
        result = _run([console_script(name), *args], tmp_path)
        assert result.returncode == 0, f"{name}: {result.returncode}\n{result.stderr[-3000:]}"


def test_a_streamed_run_card_counts_the_skipped_samples_of_its_record(tiny_tarsier, data_dir, tmp_path):
    """A too-long sample in the batch the DataLoader reads ahead after the last step is recorded by the collator
    but never reaches the Trainer's counters: the card counts the record."""
    rows = [conversation_row(f"videos/{c}.mp4", f"The screen stays {c}.", i)
            for i, c in enumerate(["red", "green", "blue", "white"])]
    rows += [conversation_row("videos/red.mp4", "red " * 400, 50), rows[0]]
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output_dir = tmp_path / "run"
    result = _run(_sft(tiny_tarsier, data_dir, data, output_dir, "--max_steps", "2", "--save_strategy", "no",
                       "--dataset_streaming", "true"), tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    for marker in MODEL_LOADED:  # what a run stopped before the model must not print
        assert marker in result.stdout + result.stderr, marker
    skipped = (output_dir / "skipped_samples.jsonl").read_text().splitlines()
    assert [json.loads(line)["idx"] for line in skipped] == [50]
    assert "| `skipped_samples` | `1` |" in (output_dir / "README.md").read_text()


def test_a_checkpoint_is_pushed_from_its_published_folder(tiny_tarsier, data_dir, tmp_path, monkeypatch):
    """With `push_to_hub`, the Trainer uploads each checkpoint folder in the background as it saves it: the upload
    must start from the published `checkpoint-N`, complete, not from the folder being written."""
    import copy

    from datasets import Dataset
    from trl import SFTTrainer

    from tarsier_hf.training.arguments import video_sft_config
    from tarsier_hf.training.collator import TarsierVideoCollator
    from tarsier_hf.training.layouts import normalize_row
    from tarsier_hf.training.trainer import TarsierSFTConfig, TarsierSFTTrainer
    from frame_sampling_tarsier import UniformSampling

    _, model, processor = tiny_tarsier
    rows = [normalize_row(conversation_row(f"videos/{c}.mp4", f"The screen stays {c}.", i), str(data_dir))
            for i, c in enumerate(["red", "blue"])]
    pushed = []
    monkeypatch.setattr(SFTTrainer, "_push_from_checkpoint", lambda self, folder: pushed.append(
        (folder, sorted(p.name for p in Path(folder).iterdir()))))
    args = video_sft_config(TarsierSFTConfig, output_dir=str(tmp_path / "run"), use_cpu=True, bf16=False,
                            report_to="none", max_steps=2, save_steps=1, per_device_train_batch_size=2)
    trainer = TarsierSFTTrainer(model=copy.deepcopy(model), args=args, train_dataset=Dataset.from_list(rows),
                                data_collator=TarsierVideoCollator(processor, UniformSampling(2)),
                                processing_class=processor)
    trainer.args.push_to_hub = True  # set after the Trainer is built, which would create the Hub repository
    trainer.train()
    assert [folder for folder, _ in pushed] == [str(tmp_path / "run" / f"checkpoint-{n}") for n in (1, 2)]
    assert all("trainer_state.json" in files and "model.safetensors" in files for _, files in pushed)


def test_a_streamed_batch_of_only_bad_samples_does_not_stop_training(tiny_tarsier, data_dir):
    """No dataset to draw replacements from (a streamed run): a batch whose samples are all unreadable repeats the
    last usable sample of the worker instead of raising mid-run; only a worker's very first batch can fail."""
    import torch

    from tarsier_hf.training.collator import TarsierVideoCollator
    from tarsier_hf.training.layouts import normalize_row
    from tests.colour_clips import BAD_FILES
    from frame_sampling_tarsier import UniformSampling

    _, _, processor = tiny_tarsier
    good = normalize_row(conversation_row("videos/red.mp4", "The screen stays red.", 0), str(data_dir))
    bad = [normalize_row(conversation_row(path, "Never trained.", 100 + i), str(data_dir))
           for i, path in enumerate(BAD_FILES)]
    collator = TarsierVideoCollator(processor, UniformSampling(2))
    with pytest.raises(RuntimeError, match="first batch of this worker"):
        collator(bad)
    first = collator([good, bad[0]])
    assert int(first["skipped_samples"]) == 1 and first["input_ids"].shape[0] == 1
    again = collator(bad)
    assert int(again["skipped_samples"]) == 2
    assert torch.equal(again["input_ids"], first["input_ids"]) and torch.equal(again["labels"], first["labels"])


def test_media_that_do_not_exist_stop_the_run_before_the_model_loads(tiny_tarsier, data_dir, tmp_path):
    """Relative video paths without --video_roots: train_sft.py stops with one error naming the cause and the first
    missing files, before it loads the model (no model load in the log); with the right root it would train."""
    rows = [conversation_row(f"videos/{name}.mp4", f"The screen stays {name}.", i)
            for i, name in enumerate(("red", "green", "blue"))]
    data = tmp_path / "relative.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    cmd = [sys.executable, str(REPO / "train_sft.py"), "--model_name_or_path", str(tiny_tarsier[0]),
           "--dataset_paths", str(data), "--num_frames", "2", "--output_dir", str(tmp_path / "out"),
           "--max_steps", "2", "--use_cpu", "true", "--report_to", "none", "--bf16", "false"]
    result = _run(cmd, tmp_path)
    assert result.returncode != 0
    log = result.stdout + result.stderr
    assert "none of the 3 rows with media has its files on disk" in log and "--video_roots" in log
    assert "videos/red.mp4" in log
    for marker in MODEL_LOADED:  # stopped before the model (a run that loads one prints them: the streamed run below)
        assert marker not in log, marker


@pytest.mark.slow
def test_a_second_run_into_the_same_folder_reports_only_its_own_records(tiny_tarsier, data_dir, tmp_path):
    """A run over bad rows and unreadable files, then a corrected run into the same folder: the second run's
    `bad_rows.jsonl`, `skipped_samples.jsonl` and card hold only what it met itself (none of either)."""
    output_dir = tmp_path / "run"
    hostile = tmp_path / "hostile.jsonl"
    hostile.write_text((data_dir / "with_bad.jsonl").read_text() + "not json\n")
    first = _run(_sft(tiny_tarsier, data_dir, hostile, output_dir, "--max_steps", "2", "--save_strategy", "no"),
                 tmp_path)
    assert first.returncode == 0, first.stderr[-4000:]
    assert (output_dir / "bad_rows.jsonl").read_text().strip()
    assert (output_dir / "skipped_samples.jsonl").read_text().strip()
    second = _run(_sft(tiny_tarsier, data_dir, data_dir / "good.jsonl", output_dir, "--max_steps", "2",
                       "--save_strategy", "no"), tmp_path)
    assert second.returncode == 0, second.stderr[-4000:]
    for record in ("bad_rows.jsonl", "skipped_samples.jsonl"):
        path = output_dir / record
        assert not path.exists() or not path.read_text().strip(), record
    card = (output_dir / "README.md").read_text()
    assert "| `skipped_rows` | `0` |" in card and "| `skipped_samples` | `0` |" in card
