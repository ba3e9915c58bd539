"""Evaluation and publishing that respect a user's time (issue #38).

1. A long command checks what it needs before the long work: the judge (key, endpoint reachable within a short
   deadline, model listed), the output folder, every video; it fails in seconds, before any generation, with one
   report. `--videos` is optional when the annotation paths resolve.
2. The AutoDQ bar moves with every judge answer and shows the judge's throughput; the HTTP libraries' INFO lines
   stay out of the way unless asked for.
3. A checkpoint carries its model card from `save_pretrained` on: `model.push_to_hub`, train_sft.py's push and
   tarsier-publish upload the same card; tarsier-publish's one commit says what the folder is and leaves the
   trainer state out.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tarsier_hf.eval.common import JudgeArguments, LoggingArguments, ModelArguments, PreflightError, configure_logging
from tests.fault_server import FaultServer


@pytest.fixture()
def no_openai_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("AZURE_OPENAI_API_KEY", raising=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def dream_records(data_dir, tmp_path):
    """Two DREAM-1K records whose `video_file` is an absolute path to a real clip (so `--videos` is not needed)."""
    records = [
        {"idx": i, "dataset": "DREAM/movie_animation", "video_file": str(data_dir / "videos" / f"{name}.mp4"),
         "text": {"prompt": "<video>\nDescribe the video in detail.", "response": f"The screen stays {name}."},
         "extra_info": {"events": [f"The screen stays {name}."], "n_events": 1}}
        for i, name in enumerate(["red", "green"])
    ]
    path = tmp_path / "dream.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# -- 1. checks before the long work ------------------------------------------------------------------------------


def test_dream1k_without_a_judge_fails_in_seconds_before_generation(tiny_tarsier, dream_records, tmp_path,
                                                                    no_openai_key, capsys):
    """The measured friction: no judge settings used to mean every prediction first, then `OPENAI_API_KEY is not
    set`. Now the command stops before the model loads, names the fix, and writes no prediction."""
    from tarsier_hf.eval.dream1k import main

    output = tmp_path / "run"
    start = time.monotonic()
    with pytest.raises(SystemExit) as stopped:
        main(["--checkpoint", str(tiny_tarsier[0]), "--annotations", str(dream_records), "--output_dir", str(output)])
    elapsed = time.monotonic() - start
    message = str(stopped.value)
    assert "stopped before generation" in message and "needs an API key" in message and "--skip_scoring" in message
    assert not (output / "predictions.jsonl").exists()
    assert elapsed < 5, f"took {elapsed:.1f} s to fail"


def test_judge_checks_fail_fast_and_name_the_cause(no_openai_key):
    """An api.openai.com URL without a key fails when the judge is built; a local endpoint needs none; a closed port,
    a silent server and an unlisted model each fail within the check deadline."""
    quick = dict(judge_check_timeout=1.0, judge_cache="")
    with pytest.raises(Exception, match="needs an API key"):
        JudgeArguments(judge_base_url="https://api.openai.com/v1", **quick).prepare()

    with FaultServer() as server:  # lists "rule-judge"
        judge = JudgeArguments(judge_base_url=server.base_url, judge_model="rule-judge", **quick).prepare()
        assert judge.settings.model == "rule-judge"  # no key needed on this machine
        with pytest.raises(Exception, match=r"does not list model 'gpt-4o' \(it lists 'rule-judge'\)"):
            JudgeArguments(judge_base_url=server.base_url, judge_model="gpt-4o", **quick).prepare()

    start = time.monotonic()
    with pytest.raises(Exception, match="is not reachable"):
        JudgeArguments(judge_base_url=f"http://127.0.0.1:{_free_port()}/v1", **quick).prepare()
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        with pytest.raises(Exception, match="did not answer within 1 s"):
            JudgeArguments(judge_base_url=f"http://127.0.0.1:{silent.getsockname()[1]}/v1", **quick).prepare()
    assert time.monotonic() - start < 5

    assert JudgeArguments(skip_scoring=True).prepare() is None  # --skip_scoring: no judge, no check


@pytest.mark.parametrize("status", [401, 404])
def test_a_refused_key_fails_and_an_endpoint_without_a_model_list_passes(status, no_openai_key):
    class Endpoint(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"error": {"message": f"HTTP {status} on {self.path}"}}).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    judge_args = JudgeArguments(judge_base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", judge_api_key="k",
                                judge_cache="")
    try:
        if status == 401:
            with pytest.raises(Exception, match=r"refused the API key \(HTTP 401\)"):
                judge_args.prepare()
        else:  # no /v1/models route: nothing to check the model against, the endpoint answers
            assert judge_args.prepare().settings.base_url == judge_args.judge_base_url
    finally:
        server.shutdown()
        server.server_close()


def test_missing_videos_are_listed_before_the_model_loads(data_dir, tmp_path, caplog):
    """Every missing video in one report, before any model is loaded (the checkpoint here does not even exist);
    a run none of whose videos exist stops; an output folder that cannot be written is reported with them."""
    from tarsier_hf.eval.mcqa import MCQAArguments, evaluate_mcqa

    questions = [{"video": name, "question": "What colour?", "candidates": ["red", "blue"], "answer": "red"}
                 for name in ("red.mp4", "gone-1.mp4", "gone-2.mp4")]
    (tmp_path / "colours.json").write_text(json.dumps(questions))
    model_args = ModelArguments(checkpoint=str(tmp_path / "no-such-checkpoint"))
    data = MCQAArguments(format="mvbench", annotations=str(tmp_path / "colours.json"),
                         videos=str(data_dir / "videos"), output_dir=str(tmp_path / "run"))
    with caplog.at_level(logging.WARNING, logger="tarsier_hf.eval.common"), pytest.raises(OSError):
        evaluate_mcqa(data, model_args, progress=False)  # the report, then the model load fails
    report = [r.getMessage() for r in caplog.records if "videos are missing" in r.getMessage()]
    assert len(report) == 1 and "2 of 3 videos" in report[0]
    assert "gone-1.mp4" in report[0] and "gone-2.mp4" in report[0] and "red.mp4" not in report[0]

    (tmp_path / "a-file").write_text("")
    nothing = MCQAArguments(format="mvbench", annotations=str(tmp_path / "colours.json"), videos=str(tmp_path / "nope"),
                            output_dir=str(tmp_path / "a-file" / "run"))
    with pytest.raises(PreflightError) as stopped:
        evaluate_mcqa(nothing, model_args, progress=False)
    assert "none of the 3 videos was found" in str(stopped.value)
    assert "a-file/run: cannot write there" in str(stopped.value)


def test_openqa_skip_scoring_generates_without_a_judge(tiny_tarsier, data_dir, tmp_path, no_openai_key):
    """`--skip_scoring` needs no judge at all (it used to build one after generation, and fail there)."""
    from tarsier_hf.eval.openqa import OpenQAArguments, evaluate_openqa

    (tmp_path / "qa.jsonl").write_text(json.dumps(
        {"video": str(data_dir / "videos" / "red.mp4"), "question": "What colour is the screen?", "answer": "red"}) + "\n")
    data = OpenQAArguments(format="generic", annotations=str(tmp_path / "qa.jsonl"), output_dir=str(tmp_path / "run"))
    model_args = ModelArguments(checkpoint=str(tiny_tarsier[0]), max_new_tokens=4)
    results = evaluate_openqa(data, model_args, JudgeArguments(skip_scoring=True), progress=False)
    assert results["judge"] == {"skipped": True} and results["n_predictions"] == 1 and "accuracy" not in results
    assert (tmp_path / "run" / "predictions.jsonl").is_file()


def test_packages_needed_after_generation_are_checked_before(tmp_path):
    from tarsier_hf.eval.common import preflight

    with pytest.raises(PreflightError, match=r"not installed: no_such_package_for_figures \(pip install"):
        preflight("DREAM-1K", tmp_path / "run", 1, [], packages=("matplotlib", "no_such_package_for_figures"))


def test_videos_folder_is_optional_when_paths_resolve(dream_records, data_dir, tmp_path):
    from transformers import HfArgumentParser

    from tarsier_hf.eval.dream1k import Dream1kArguments, build_requests, load_annotations
    from tarsier_hf.eval.mcqa import load_mvbench

    (data,) = HfArgumentParser(Dream1kArguments).parse_args_into_dataclasses(
        args=["--annotations", str(dream_records), "--output_dir", str(tmp_path / "run")])
    assert data.videos is None
    requests, missing = build_requests(load_annotations(dream_records), data.videos, "Describe the video.")
    assert not missing and [Path(r.video).name for r in requests] == ["red.mp4", "green.mp4"]

    absolute = [{"video": str(data_dir / "videos" / "blue.mp4"), "question": "q", "candidates": ["a", "b"], "answer": "a"}]
    (tmp_path / "task.json").write_text(json.dumps(absolute))
    assert load_mvbench(tmp_path / "task.json", None)[0].video == str(data_dir / "videos" / "blue.mp4")


# -- 2. progress that moves, logs that stay quiet ----------------------------------------------------------------


def test_autodq_bar_moves_with_every_judge_answer_and_shows_throughput(capsys):
    """One sample takes four judge answers; the bar shows them (and the request rate) before the sample is done."""
    from tarsier_hf.eval.autodq.pipeline import build_judge, make_samples, run_autodq
    from tarsier_hf.eval.autodq.scoring import get_config

    config = get_config("robust")
    with FaultServer(always="slow", slow_seconds=1.1) as server:
        judge = build_judge("openai", config, judge_model="rule-judge", base_url=server.base_url, cache_path=False)
        samples = make_samples(["A man walks. He opens the door."], ["A man walks to the door. He opens it."])
        result = run_autodq(samples, judge, config, concurrency=1)
    assert result["calls"]["completed"] == 4
    updates = capsys.readouterr().err.replace("\r", "\n").splitlines()
    before_done = [line for line in updates if "0/1" in line and "judge: " in line]
    assert any("judge: 2 answers" in line or "judge: 3 answers" in line for line in before_done), updates
    assert all(" req/" in line and "samples/" in line for line in before_done)
    assert any("1/1" in line and "judge: 4 answers" in line and "failed=0" in line for line in updates)


@pytest.fixture()
def restore_library_loggers():
    from tarsier_hf.eval.common import LIBRARY_LOGGERS

    levels = {name: logging.getLogger(name).level for name in LIBRARY_LOGGERS}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_http_library_chatter_stays_at_warning_unless_verbose(restore_library_loggers, caplog):
    from tarsier_hf.eval.autodq.openai_judge import OpenAIChatJudge

    with FaultServer() as server:
        judge = OpenAIChatJudge("rule-judge", base_url=server.base_url)
        for verbose in (False, True):
            configure_logging(LoggingArguments(verbose=verbose))
            caplog.clear()
            with caplog.at_level(logging.INFO):
                judge.chat([{"role": "user", "content": f"Hello {verbose}"}])
            http_lines = [r for r in caplog.records if r.name.startswith(("httpx", "httpcore", "openai"))]
            assert bool(http_lines) == verbose, [r.getMessage() for r in http_lines]


# -- 3. one card from save_pretrained on; the publish plan -------------------------------------------------------


def test_save_pretrained_writes_the_card_and_push_to_hub_uploads_it(tiny_tarsier, tmp_path, monkeypatch):
    """`model.push_to_hub` (transformers writes huggingface_hub's placeholder over the saved card for a repository
    without one) uploads the same card as tarsier-publish for that repository; a card already there is kept."""
    from huggingface_hub.errors import EntryNotFoundError
    from transformers.utils import hub as transformers_hub

    from tarsier_hf.hub import publish as hub_publish

    _, model, _ = tiny_tarsier
    model.save_pretrained(tmp_path / "saved")
    card = (tmp_path / "saved" / "README.md").read_text()
    assert "# saved\n" in card and "pipeline_tag: image-text-to-text" in card and "Model Card for Model ID" not in card
    (tmp_path / "saved" / "README.md").write_text("# Mine\n")
    model.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "README.md").read_text() == "# Mine\n"

    class FakeApi:  # the Hub calls push_to_hub makes before its upload; nothing leaves this machine
        def create_repo(self, repo_id, **kwargs):
            return type("RepoUrl", (), {"repo_id": repo_id})()

    def no_remote_card(repo_id, token=None):
        raise EntryNotFoundError("no README.md in the repository")

    uploaded = {}

    def record_upload(self, working_dir, repo_id, files_timestamps, commit_message=None, **kwargs):
        uploaded.update(files=sorted(p.name for p in Path(working_dir).iterdir()),
                        card=(Path(working_dir) / "README.md").read_text())

    monkeypatch.setattr(transformers_hub, "hf_api", lambda: FakeApi())
    monkeypatch.setattr(transformers_hub.ModelCard, "load", no_remote_card)
    monkeypatch.setattr(transformers_hub.PushToHubMixin, "_upload_modified_files", record_upload)
    model.push_to_hub("someone/tarsier-tiny")
    assert "model.safetensors" in uploaded["files"] and "Model Card for Model ID" not in uploaded["card"]

    folder = tmp_path / "checkpoint"
    shutil.copytree(tiny_tarsier[0], folder)  # saved by save_pretrained: README.md titled "tarsier"
    plan = hub_publish.push_to_hub(folder, "someone/tarsier-tiny", staging_dir=tmp_path / "up", dry_run=True)
    assert (plan.folder / "README.md").read_text() == uploaded["card"]
    assert (folder / "README.md").read_text().count("# tarsier\n") == 1  # the source folder is left as it was


def test_publish_plan_of_a_trained_folder(tiny_tarsier, tmp_path, monkeypatch):
    """The trainer's state and optimizer stay home, the message says what the folder is, and model and processor
    go up in one commit."""
    from tarsier_hf.hub import publish as hub_publish
    from tarsier_hf.hub.model_card import render_model_card

    folder = tmp_path / "trained"
    shutil.copytree(tiny_tarsier[0], folder)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 7, "log_history": []}))
    for leftover in ("training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (folder / leftover).write_bytes(b"\0")
    plan = hub_publish.push_to_hub(folder, "someone/tarsier-trained", staging_dir=tmp_path / "up", dry_run=True)
    assert plan.commit_message == "Upload Tarsier checkpoint trained with train_sft.py (7 steps)"
    assert not {"trainer_state.json", "training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth"} & set(plan.files)

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id))

        def upload_folder(self, repo_id, folder_path, commit_message, **kwargs):
            calls.append(("upload_folder", sorted(p.name for p in Path(folder_path).iterdir()), commit_message))
            return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/1"})()

    monkeypatch.setattr(hub_publish, "HfApi", FakeApi)
    pushed = hub_publish.push_to_hub(folder, "someone/tarsier-trained", staging_dir=tmp_path / "up2")
    uploads = [call for call in calls if call[0] == "upload_folder"]
    assert len(uploads) == 1 and pushed.commit_url.endswith("/commit/1")
    files, message = uploads[0][1], uploads[0][2]
    assert {"model.safetensors", "config.json", "processor_config.json", "chat_template.jinja", "README.md"} <= set(files)
    assert message == plan.commit_message

    (folder / "trainer_state.json").unlink()
    (folder / "README.md").write_text(render_model_card(
        "Tarsier (converted)", origin="a released checkpoint (the weights are the released ones, renamed only) "
        "converted to the Hugging Face-native Tarsier classes"))
    assert hub_publish.describe_checkpoint(folder) == (
        "Upload Tarsier checkpoint converted from a released checkpoint with tarsier-convert")
    (folder / "README.md").write_text(render_model_card("me/x", training={"learning_rate": 1e-5}))
    assert hub_publish.describe_checkpoint(folder) == "Upload Tarsier checkpoint trained with train_sft.py"


def test_publish_plan_of_a_lora_adapter_folder(tiny_tarsier, tmp_path):
    """An adapter folder (no config.json) keeps train_sft.py's card; with only peft's placeholder it gets the
    adapter card, loading on the base model its adapter_config.json names."""
    from tarsier_hf.hub import publish as hub_publish
    from tarsier_hf.hub.checkpoint import CODE_FILES
    from tarsier_hf.hub.model_card import render_model_card

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    for name in ("processor_config.json", "chat_template.jinja", "tokenizer_config.json", "tokenizer.json", *CODE_FILES):
        shutil.copy(tiny_tarsier[0] / name, adapter / name)
    shutil.copy(tiny_tarsier[0] / "model.safetensors", adapter / "adapter_model.safetensors")
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": "org/base"}))
    trained = render_model_card("me/adapter", "org/base", training={"use_peft": True}, is_adapter=True)
    (adapter / "README.md").write_text(trained)
    plan = hub_publish.push_to_hub(adapter, "me/adapter", staging_dir=tmp_path / "up", dry_run=True)
    assert (plan.folder / "README.md").read_text() == trained
    assert plan.commit_message == "Upload Tarsier LoRA adapter trained with train_sft.py"

    (adapter / "README.md").write_text("---\nlibrary_name: peft\n---\n\n# Model Card for Model ID\n")
    plan = hub_publish.push_to_hub(adapter, "me/adapter", staging_dir=tmp_path / "up2", dry_run=True)
    card = (plan.folder / "README.md").read_text()
    assert "library_name: peft" in card and 'PeftModel.from_pretrained(base, "me/adapter")' in card
    assert 'AutoModelForImageTextToText.from_pretrained("org/base"' in card


def test_autodq_stops_on_the_first_samples_when_the_endpoint_refuses_them():
    """A judge whose model list is fine but whose chat endpoint refuses every request (an unknown model, a key
    only checked there) stops after the first sample, not after scoring every sample 0."""
    from tarsier_hf.eval.autodq.judge import JudgeUnavailableError
    from tarsier_hf.eval.autodq.openai_judge import OpenAIChatJudge
    from tarsier_hf.eval.autodq.pipeline import make_samples, run_autodq
    from tarsier_hf.eval.autodq.scoring import get_config

    posts = []

    class UnknownModel(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            posts.append(self.path)
            body = b'{"error": {"message": "The model `judge-x` does not exist.", "code": 404}}'
            self.send_response(404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), UnknownModel)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        judge = OpenAIChatJudge("judge-x", base_url=f"http://127.0.0.1:{server.server_address[1]}/v1")
        samples = make_samples([f"A man opens door {i}." for i in range(20)], [f"A man opens door {i}." for i in range(20)])
        with pytest.raises(JudgeUnavailableError, match=r"first 2 sample\(s\) all failed.*HTTP 404.*'judge-x'"):
            run_autodq(samples, judge, get_config("robust"), concurrency=2, bootstrap=0, progress=False)
    finally:
        server.shutdown()
        server.server_close()
    assert len(posts) <= 4  # the first wave only, of 20 samples
