"""The console scripts' shared surface (issue #38): every `--help` opens with a sentence and an example, the flag
vocabulary (`--model_name_or_path`, `--output_dir`, `--output_file`, `--input_dir`) with the old names still
parsing for one release, with a `FutureWarning` naming the new one, and the one-line consent error."""

from __future__ import annotations

import configparser
import contextlib
import importlib
import io
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import transformers

from tests.conftest import console_script

REPO = Path(__file__).resolve().parents[1]
SETUP = configparser.ConfigParser()
SETUP.read(REPO / "setup.cfg")
CONSOLE_SCRIPTS = dict(
    line.replace(" ", "").split("=") for line in SETUP["options.entry_points"]["console_scripts"].strip().splitlines()
)


def _main(target: str):
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def _help_of(name: str) -> str:
    """`--help` of a console script (or `train_sft.py`), run in this process (one import of torch for all)."""
    if name == "train_sft.py":
        sys.path.insert(0, str(REPO))
        try:
            parser = importlib.import_module("train_sft").make_parser()
        finally:
            sys.path.remove(str(REPO))
        return parser.format_help()
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        _main(CONSOLE_SCRIPTS[name])(["--help"])
    assert done.value.code in (0, None)
    return out.getvalue()


@pytest.mark.parametrize("name", [*CONSOLE_SCRIPTS, "train_sft.py"])
def test_help_opens_with_a_sentence_and_an_example(name):
    text = _help_of(name)
    usage, summary, example, *_ = text.split("\n\n")
    assert usage.startswith("usage: ")
    assert re.fullmatch(r"[A-Z][^\n]*\.", summary) and not re.search(r"\.\s+[A-Z]", summary), summary
    command = "python train_sft.py" if name == "train_sft.py" else name
    assert example.startswith(f"example:\n  {command} "), example
    if name == "train_sft.py":  # the YAML config: in the usage line, the sentence and the example, before 800 lines
        assert "--config" in usage and "--config YAML" in summary and "--config recipes/" in example


class Parsed(Exception):
    """Raised in place of running a command, carrying what its parser produced."""


def _parse(monkeypatch, target: str, argv: list[str]):
    """What the command `target` (module:function) parses `argv` into, without running it."""
    parse = transformers.HfArgumentParser.parse_args_into_dataclasses

    def capturing(self, *args, **kwargs):
        raise Parsed(parse(self, *args, **kwargs))

    monkeypatch.setattr(transformers.HfArgumentParser, "parse_args_into_dataclasses", capturing)
    with pytest.raises(Parsed) as caught:
        _main(target)(argv)
    return caught.value.args[0]


def _field(name):
    """A getter of the first dataclass in the parse result that has `name`."""
    return lambda parsed: next(getattr(x, name) for x in parsed if hasattr(x, name))


RUNNER = ["--annotations", "a.jsonl", "--output_dir", "o"]
# (command, the other arguments it needs, old flag, new flag, where the value lands)
RENAMED = [
    ("tarsier-describe", ["v.mp4", "--output_file", "o.jsonl"], "--checkpoint", "--model_name_or_path", "checkpoint"),
    ("tarsier-describe", ["v.mp4", "--model_name_or_path", "m"], "--output", "--output_file", "output"),
    ("tarsier-infer", ["--requests", "r.jsonl", "--output_file", "o"], "--checkpoint", "--model_name_or_path",
     "checkpoint"),
    ("tarsier-infer", ["--requests", "r.jsonl", "--model_name_or_path", "m"], "--output", "--output_file", "output"),
    ("tarsier-convert", ["--output_dir", "o"], "--input", "--model_name_or_path", "input"),
    ("tarsier-convert", ["--model_name_or_path", "m"], "--output", "--output_dir", "output"),
    ("tarsier-publish", ["--repo_id", "me/x"], "--folder", "--model_name_or_path", "folder"),
    ("tarsier-dream-s", [], "--out", "--output_dir", "out"),
    ("tarsier-dream1k", RUNNER, "--checkpoint", "--model_name_or_path", "checkpoint"),
    ("tarsier-mcqa", ["--format", "mvbench", *RUNNER], "--checkpoint", "--model_name_or_path", "checkpoint"),
    ("tarsier-openqa", ["--format", "msvd_qa", *RUNNER], "--checkpoint", "--model_name_or_path", "checkpoint"),
    ("tarsier-captioning", ["--format", "msrvtt", *RUNNER], "--checkpoint", "--model_name_or_path", "checkpoint"),
]


@contextlib.contextmanager
def _no_future_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        yield


@pytest.mark.parametrize("name, others, old, new, field", RENAMED, ids=[f"{c[0]}{c[2]}" for c in RENAMED])
def test_old_and_new_flag_parse_alike(monkeypatch, name, others, old, new, field):
    target, value = CONSOLE_SCRIPTS[name], "VALUE"
    with _no_future_warning():
        parsed_new = _parse(monkeypatch, target, [*others, new, value])
    with pytest.warns(FutureWarning, match=f"{old} is deprecated.*use {new}"):
        parsed_old = _parse(monkeypatch, target, [*others, old, value])
    assert _field(field)(parsed_new) == _field(field)(parsed_old) == value
    assert new in _help_of(name)  # shown first, the old name beside it


def test_side_by_side_old_and_new_flags(monkeypatch, tmp_path):
    """serve's --out is --output_dir; report's --out (the sessions it reads) is --input_dir, its --output
    --output_file."""
    from tarsier_hf.eval.side_by_side import __main__ as sbs

    def stop(folder, *args, **kwargs):
        raise Parsed(folder)

    monkeypatch.setattr(sbs, "open_session", stop)
    serve = ["serve", "--results", "a.jsonl", "b.jsonl"]
    with _no_future_warning(), pytest.raises(Parsed, match="runs/x"):
        sbs.main([*serve, "--output_dir", "runs/x"])
    with pytest.warns(FutureWarning, match="--out is deprecated.*--output_dir"), pytest.raises(Parsed, match="runs/x"):
        sbs.main([*serve, "--out", "runs/x"])

    monkeypatch.setattr(sbs, "report", lambda folders, *args: (json.dumps(folders), {}))
    for flags, warned in ((["--input_dir", "s1", "s2", "--output_file"], False),
                          (["--out", "s1", "s2", "--output"], True)):
        written = tmp_path / f"{warned}.md"
        context = (pytest.warns(FutureWarning, match="use --(input_dir|output_file)$") if warned
                   else _no_future_warning())
        with context, contextlib.redirect_stdout(io.StringIO()):
            assert sbs.main(["report", *flags, str(written)]) == 0
        assert json.loads(written.read_text()) == ["s1", "s2"]


def test_serve_model_flag_and_deprecated_positional(monkeypatch):
    from tarsier_hf.inference.serve import __main__ as serve

    def stop(model, *args, **kwargs):
        raise Parsed(model)

    monkeypatch.setattr(serve, "Engine", stop)
    with _no_future_warning(), pytest.raises(Parsed, match="^m$"):
        serve.main(["--model_name_or_path", "m"])
    with pytest.warns(FutureWarning, match="positional.*--model_name_or_path"), pytest.raises(Parsed, match="^m$"):
        serve.main(["m"])
    for argv in ([], ["m", "--model_name_or_path", "m"]):
        with pytest.raises(SystemExit) as done, contextlib.redirect_stderr(io.StringIO()):
            serve.main(argv)
        assert done.value.code == 2


@pytest.fixture
def remote_code_checkpoint(tmp_path) -> Path:
    """A folder whose model (an architecture transformers does not know) is only in code files it would ship."""
    folder = tmp_path / "custom-video-lm"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "custom_video_lm", "architectures": ["CustomVideoLM"],
        "auto_map": {"AutoConfig": "configuration_custom.CustomConfig",
                     "AutoModelForCausalLM": "modeling_custom.CustomVideoLM"}}))
    (tmp_path / "clip.mp4").write_bytes(b"")
    (tmp_path / "requests.jsonl").write_text('{"id": "a", "video": "clip.mp4", "prompt": "Describe."}\n')
    return folder


@pytest.mark.parametrize("name, args", [
    ("tarsier-serve", []),
    ("tarsier-describe", ["clip.mp4", "--output_file", "d.jsonl"]),
    ("tarsier-infer", ["--requests", "requests.jsonl", "--output_file", "p.jsonl", "--num_frames", "4"]),
])
def test_missing_consent_is_one_line_naming_the_flag(remote_code_checkpoint, name, args):
    done = subprocess.run([console_script(name), "--model_name_or_path", str(remote_code_checkpoint), *args],
                          cwd=remote_code_checkpoint.parent, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "pass --trust_remote_code true" in last, done.stderr[-3000:]
    assert [line for line in done.stderr.splitlines() if line.startswith("error: ")] == [last]
