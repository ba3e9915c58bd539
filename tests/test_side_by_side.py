"""Side-by-side human evaluation: result parsing, sampling, the server (Range, blindness, label saving), the report,
and the page driven by keyboard in a real headless Chromium (reload, server killed mid-way, label change)."""

from __future__ import annotations

import io
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tarsier_hf.dream_s.video_writer import write_video
from tarsier_hf.eval.side_by_side.labels import LabelError, LabelStore
from tarsier_hf.eval.side_by_side.report import analyse, cohen_kappa, fleiss_kappa, session_winners, to_markdown
from tarsier_hf.eval.side_by_side.results import ResultsError, load_results
from tarsier_hf.eval.side_by_side.server import AnnotationServer, parse_range
from tarsier_hf.eval.side_by_side.session import SessionError, assign_pairs, load_session, open_session, sample_session

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
NUM_VIDEOS = 6


def _write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> dict:
    """Tiny mp4s (one grey level per frame, rising) and two result files: model 1 "GOOD", model 2 "BAD"."""
    root = tmp_path_factory.mktemp("sbs")
    videos = root / "videos"
    videos.mkdir()
    for i in range(NUM_VIDEOS):
        frames = [np.full((48, 64, 3), 20 + 20 * k, np.uint8) for k in range(10)]
        write_video(videos / f"clip{i}.mp4", frames, fps=10)
    # Model 1 uses the runner's canonical fields; model 2 the lenient ones (integer idx, description).
    first = _write_jsonl(root / "good.jsonl", [
        {"id": str(i), "video": f"clip{i}.mp4", "prediction": f"GOOD description of clip {i}.", "model": "tarsier-good"}
        for i in range(NUM_VIDEOS)
    ] + [{"id": "only-in-1", "video": "clip0.mp4", "prediction": "x"}])
    second = _write_jsonl(root / "bad.jsonl", [
        {"idx": i, "vid": f"clip{i}.mp4", "description": f"BAD description of clip {i}.", "checkpoint": "baseline-bad"}
        for i in reversed(range(NUM_VIDEOS))
    ])
    # "vid" is an id alias, so model 2's lines give no video path: the video comes from model 1's file.
    return {"root": root, "videos": videos, "first": first, "second": second}


# ---------------------------------------------------------------------------------------------------------------
# Result files and sampling
# ---------------------------------------------------------------------------------------------------------------
def test_load_results_is_lenient_and_names_models(workdir):
    first = load_results(workdir["first"])
    second = load_results(workdir["second"])
    assert first.model == "tarsier-good" and second.model == "baseline-bad"
    assert second.predictions["3"].prediction == "BAD description of clip 3."
    assert second.predictions["3"].video is None  # idx wins over vid as the id; no video field left
    assert load_results(workdir["first"], model="override").model == "override"


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"id": "1", "prediction": "a"}', '{"id": "2", "prediction": '], ":2: not valid JSON"),
        (['[1, 2]'], ":1: a JSON list, not an object"),
        (['{"prediction": "a"}'], ":1: no id field"),
        (['{"id": "1"}'], ":1: no prediction field"),
        (['{"id": "1", "response": 5}'], ":1: field 'response' must be a string"),
        (['{"id": "1", "prediction": "a"}', "", '{"id": 1, "prediction": "b"}'], ":3: duplicate id '1' (first seen on line 1)"),
        ([], "no predictions"),
    ],
)
def test_load_results_errors_name_file_and_line(tmp_path, lines, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ResultsError) as error:
        load_results(path)
    assert str(path) in str(error.value) and message in str(error.value)


def test_missing_inputs_are_clear_errors(workdir, tmp_path):
    with pytest.raises(ResultsError, match="result file not found"):
        load_results(tmp_path / "nope.jsonl")
    with pytest.raises(ResultsError, match="video folder not found"):
        sample_session(workdir["first"], workdir["second"], tmp_path / "no-videos", 2)
    with pytest.raises(ResultsError, match="only 6 ids are present in both"):
        sample_session(workdir["first"], workdir["second"], workdir["videos"], 7)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "clip2.mp4").write_bytes((workdir["videos"] / "clip2.mp4").read_bytes())
    with pytest.raises(ResultsError) as error:
        sample_session(workdir["first"], workdir["second"], partial, 0)
    text = str(error.value)
    assert "5 of 6 sampled videos are unusable" in text
    assert f"video of id '4' not found: {partial / 'clip4.mp4'}" in text and "good.jsonl:5" in text


def test_sampling_is_seeded_and_records_the_swap(workdir):
    one = sample_session(workdir["first"], workdir["second"], workdir["videos"], 4, seed=1)
    again = sample_session(workdir["first"], workdir["second"], workdir["videos"], 4, seed=1)
    other = sample_session(workdir["first"], workdir["second"], workdir["videos"], 4, seed=2)
    assert [(p.id, p.swap) for p in one.pairs] == [(p.id, p.swap) for p in again.pairs]
    assert [(p.id, p.swap) for p in one.pairs] != [(p.id, p.swap) for p in other.pairs]
    assert all(p.id != "only-in-1" for p in one.pairs)
    everything = sample_session(workdir["first"], workdir["second"], workdir["videos"], 0, seed=0)
    assert sorted(p.id for p in everything.pairs) == [str(i) for i in range(NUM_VIDEOS)]
    for pair in everything.pairs:
        assert ("GOOD" in pair.text_a) != pair.swap and ("GOOD" in pair.text_b) == pair.swap
        assert pair.winner("A") == ("model_2" if pair.swap else "model_1")
        assert pair.winner("B") == ("model_1" if pair.swap else "model_2")
        assert Path(pair.video) == (workdir["videos"] / f"clip{pair.id}.mp4").resolve()


def test_session_is_reused_and_refused_for_other_inputs(workdir, tmp_path):
    out = tmp_path / "run"
    created = open_session(out, workdir["first"], workdir["second"], workdir["videos"], 3, seed=5)
    reused = open_session(out, workdir["first"], workdir["second"], workdir["videos"], 3, seed=5)
    assert reused.pairs == created.pairs == load_session(out).pairs
    with pytest.raises(SessionError, match="different seed"):
        open_session(out, workdir["first"], workdir["second"], workdir["videos"], 3, seed=6)
    with pytest.raises(SessionError, match="session file not found"):
        load_session(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------------------------
# Server (in-process, real sockets on 127.0.0.1)
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture()
def live_server(workdir, tmp_path):
    out = tmp_path / "run"
    session = open_session(out, workdir["first"], workdir["second"], workdir["videos"], 4, seed=0)
    server = AnnotationServer(session, out, port=0, frames=5)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, session, out
    server.shutdown()
    server.server_close()


def _request(url, data=None, headers=None, method=None):
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_parse_range():
    assert parse_range(None, 100) is None
    assert parse_range("bytes=0-9", 100) == (0, 9)
    assert parse_range("bytes=90-", 100) == (90, 99)
    assert parse_range("bytes=-10", 100) == (90, 99)
    assert parse_range("bytes=50-1000", 100) == (50, 99)
    assert parse_range("bytes=100-", 100) == "unsatisfiable"
    assert parse_range("bytes=0-1,5-6", 100) is None  # several ranges: the whole body is allowed
    assert parse_range("items=0-1", 100) is None


def test_server_binds_loopback_and_serves_ranges(live_server):
    server, session, _ = live_server
    assert server.server_address[0] == "127.0.0.1"
    data = Path(session.pairs[1].video).read_bytes()
    status, headers, body = _request(server.url + "video/1")
    assert status == 200 and body == data and headers["Accept-Ranges"] == "bytes" and headers["Content-Type"] == "video/mp4"
    status, headers, body = _request(server.url + "video/1", headers={"Range": "bytes=10-29"})
    assert status == 206 and body == data[10:30] and headers["Content-Range"] == f"bytes 10-29/{len(data)}"
    status, headers, body = _request(server.url + "video/1", headers={"Range": "bytes=-7"})
    assert status == 206 and body == data[-7:]
    status, headers, _ = _request(server.url + "video/1", headers={"Range": f"bytes={len(data)}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(data)}"
    assert _request(server.url + "video/99")[0] == 404
    assert _request(server.url + "video/1", headers={"Host": "evil.example:80"})[0] == 403


def test_session_api_is_blind_and_labels_are_saved(live_server):
    server, session, out = live_server
    status, _, body = _request(server.url + "api/session?annotator=carol")
    assert status == 200
    text = body.decode()
    assert "tarsier-good" not in text and "baseline-bad" not in text and "swap" not in text
    data = json.loads(text)
    assert [p["text_a"] for p in data["pairs"]] == [p.text_a for p in session.pairs] and data["labels"] == {}

    def post(payload, content_type="application/json"):
        return _request(server.url + "api/label", json.dumps(payload).encode(), {"Content-Type": content_type}, "POST")

    status, _, body = post({"annotator": "carol", "pair": 2, "label": "B", "elapsed_s": 1.5})
    assert status == 200 and json.loads(body) == {"ok": True, "pair": 2, "label": "B"}
    assert post({"annotator": "carol", "pair": 2, "label": "C"})[0] == 400
    assert post({"annotator": "../etc", "pair": 2, "label": "A"})[0] == 400
    assert post({"annotator": "carol", "pair": 4, "label": "A"})[0] == 400
    assert post({"annotator": "carol", "pair": 1, "label": "A"}, content_type="text/plain")[0] == 415
    lines = (out / "labels" / "carol.jsonl").read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["winner"] == ("model_1" if session.pairs[2].swap else "model_2") and record["elapsed_s"] == 1.5
    assert json.loads(_request(server.url + "api/session?annotator=carol")[2])["labels"] == {"2": "B"}


def test_frames_endpoint_decodes_thumbnails_in_time_order(live_server):
    server, _, _ = live_server
    means = []
    for k in range(5):
        status, headers, body = _request(server.url + f"frames/0/{k}.jpg")
        assert status == 200 and headers["Content-Type"] == "image/jpeg"
        means.append(np.asarray(Image.open(io.BytesIO(body)).convert("L")).mean())
    # 10 frames at grey 20, 40, ..., 200 over 1 s; slice centres 0.1, 0.3, ... s -> frames 1, 3, 5, 7, 9
    assert means == sorted(means) and abs(means[0] - 40) < 6 and abs(means[-1] - 200) < 6
    assert _request(server.url + "frames/0/5.jpg")[0] == 404


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------
def test_report_numbers_last_label_wins_and_agreement(workdir, tmp_path):
    out = tmp_path / "run"
    session = open_session(out, workdir["first"], workdir["second"], workdir["videos"], 5, seed=0)
    store = LabelStore(out, session)
    good = [("B" if p.swap else "A") for p in session.pairs]  # the label that prefers model 1
    bad = [("A" if p.swap else "B") for p in session.pairs]
    # ann1: win, win, same, loss, win (pair 4 first labelled loss, then changed); ann2: win, loss, same, loss, win
    for i, label in enumerate([good[0], good[1], "same", bad[3], bad[4]]):
        store.add("ann1", i, label)
    store.add("ann1", 4, good[4])
    for i, label in enumerate([good[0], bad[1], "same", bad[3], good[4]]):
        store.add("ann2", i, label)
    assert {p.swap for p in session.pairs} == {True, False}, "the seed must give both A/B orders"
    assert session_winners(out, session)["ann1"] == {0: "model_1", 1: "model_1", 2: "same", 3: "model_2", 4: "model_1"}
    result = analyse(out, num_bootstrap=500)
    rows = {row["annotator"]: row for row in result["rows"]}
    assert rows["ann1"]["win"] == pytest.approx(0.6) and rows["ann1"]["same"] == pytest.approx(0.2)
    assert rows["ann1"]["advantage"] == pytest.approx(0.4)
    assert rows["ann2"]["advantage"] == pytest.approx(0.0) and rows["ann2"]["loss"] == pytest.approx(0.4)
    assert rows["pooled"]["judgments"] == 10 and rows["pooled"]["advantage"] == pytest.approx(0.2)
    for row in rows.values():
        assert -1 <= row["ci_low"] <= row["advantage"] <= row["ci_high"] <= 1 and row["ci_low"] < row["ci_high"]
    agreement = result["agreement"][0]
    assert agreement["common"] == 5 and agreement["percent"] == pytest.approx(0.8)
    # p_o = 0.8; p_e = 0.6*0.4 (win) + 0.2*0.2 (same) + 0.2*0.4 (loss) = 0.36
    assert agreement["cohen_kappa"] == pytest.approx((0.8 - 0.36) / (1 - 0.36))
    # Fleiss with 2 raters: shares win 5/10, same 2/10, loss 3/10 -> P_e = 0.38; P_o = 0.8
    assert result["fleiss_kappa"] == pytest.approx((0.8 - 0.38) / (1 - 0.38))
    markdown = to_markdown([result])
    assert "| tarsier-good vs baseline-bad | ann1 | 5/5 | 60.0% | 20.0% | 20.0% | +40.0% |" in markdown
    assert "| ann1 / ann2 | 5 | 80.0% | 0.688 |" in markdown
    # A corrupted label file is reported with file and line, never silently skipped.
    with (out / "labels" / "ann2.jsonl").open("a") as handle:
        handle.write('{"pair": 1, "label": \n')
    with pytest.raises(LabelError, match=r"ann2\.jsonl:6: not valid JSON"):
        analyse(out)


def test_kappas_on_textbook_cases():
    assert cohen_kappa(["model_1"] * 3 + ["model_2"] * 3, ["model_1"] * 3 + ["model_2"] * 3) == pytest.approx(1.0)
    # 2x2 example: a agrees on 20 "model_1" + 15 "model_2" of 50; p_o = 0.7, p_e = 0.5*0.6 + 0.5*0.4 = 0.5
    a = ["model_1"] * 25 + ["model_2"] * 25
    b = ["model_1"] * 20 + ["model_2"] * 5 + ["model_1"] * 10 + ["model_2"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert np.isnan(cohen_kappa(["same"] * 4, ["same"] * 4))
    assert fleiss_kappa([["same", "same", "same"], ["model_1", "model_1", "model_1"]]) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------------------
# End to end: CLI server process + real headless Chromium, keyboard only
# ---------------------------------------------------------------------------------------------------------------
class ServerProcess:
    """`python -m tarsier_hf.eval.side_by_side serve --results ... --port 0` as a child process; its URL is read from stdout."""

    def __init__(self, args: list[str]):
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen([sys.executable, "-m", "tarsier_hf.eval.side_by_side", "serve", *args, "--port", "0"],
                                     cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(l) for l in self.proc.stdout], daemon=True).start()
        try:
            first = lines.get(timeout=30)
        except queue.Empty:
            self.kill()
            raise AssertionError(f"server did not start: {self.proc.stderr.read()}")
        assert first.startswith("Serving"), first
        self.url = first.split(" on ")[1].split()[0]

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (and pip install playwright)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
        yield instance
        instance.close()


def _label_current(page, prefer: str, key_for: dict) -> int:
    """Press the key that prefers model "GOOD"/"BAD" (or "same") on the shown pair; wait until it is saved."""
    index = int(page.get_attribute("body", "data-pair"))
    text_a = page.inner_text("#text-a")
    side = "same" if prefer == "same" else ("A" if (prefer in text_a) else "B")
    page.keyboard.press(key_for[side])
    page.wait_for_function(f"document.body.dataset.pair !== '{index}' && document.body.dataset.state !== 'saving'")
    return index


@pytest.mark.slow
def test_browser_labelling_survives_reload_and_server_kill(workdir, tmp_path, browser):
    out = tmp_path / "run"
    args = ["--results", str(workdir["first"]), str(workdir["second"]), "--videos", str(workdir["videos"]), "--out", str(out),
            "--num", "5", "--seed", "3"]
    server = ServerProcess(args)
    session = load_session(out)
    assert {p.swap for p in session.pairs} == {True, False}, "the seed must give both A/B orders"
    label_file = out / "labels" / "alice.jsonl"
    context = browser.new_context()
    context.set_default_timeout(10_000)  # a broken page fails fast instead of waiting 30 s per step
    page = context.new_page()
    try:
        page.goto(server.url)  # no annotator yet: the name form
        page.fill("#annotator-name", "alice")
        page.press("#annotator-name", "Enter")
        page.wait_for_selector("body[data-state=ready]")
        assert "annotator=alice" in page.url
        assert "reading video descriptions to a blind person" in page.inner_text("#guide")
        assert page.inner_text("#progress") == "alice · Pair 1 of 5 · 0 labelled"
        # The real video plays: Chromium decoded the H.264 mp4 fetched through the Range-capable route.
        page.wait_for_function("document.getElementById('video').readyState >= 2", timeout=10_000)
        assert page.evaluate("document.getElementById('video').duration") == pytest.approx(1.0, abs=0.15)
        assert page.is_visible("#video") and page.is_hidden("#frames") and page.is_visible("#guide li")

        keys = {"A": "a", "B": "b", "same": "s"}
        assert _label_current(page, "GOOD", keys) == 0
        assert _label_current(page, "GOOD", {"A": "1", "B": "3", "same": "2"}) == 1
        assert len(label_file.read_text().splitlines()) == 2

        page.reload()  # resumes at the first unlabelled pair
        page.wait_for_selector("body[data-state=ready]")
        assert page.get_attribute("body", "data-pair") == "2"
        assert _label_current(page, "same", keys) == 2

        server.kill()  # killed mid-way: everything acknowledged is on disk
        saved = [json.loads(line) for line in label_file.read_text().splitlines()]
        assert [(r["pair"], r["label"]) for r in saved] == [
            (0, "B" if session.pairs[0].swap else "A"), (1, "B" if session.pairs[1].swap else "A"), (2, "same")]
        assert [r["winner"] for r in saved] == ["model_1", "model_1", "same"]
        page.keyboard.press("b")  # the page says the label was not saved and stays on the pair
        page.wait_for_selector("body[data-state=error]")
        assert "NOT saved" in page.inner_text("#status") and page.get_attribute("body", "data-pair") == "3"

        server = ServerProcess(args)  # same folder: same session, same A/B order
        assert load_session(out).pairs == session.pairs
        page.goto(server.url + "?annotator=alice")
        page.wait_for_selector("body[data-state=ready]")
        assert page.get_attribute("body", "data-pair") == "3"
        assert _label_current(page, "BAD", keys) == 3
        assert _label_current(page, "BAD", keys) == 4
        page.wait_for_selector("body[data-state=done]")
        page.keyboard.press("ArrowLeft")  # back to pair 4 and change its label: the last label wins
        page.wait_for_selector("body[data-state=ready]")
        assert page.get_attribute("body", "data-pair") == "4"
        assert page.inner_text("#current-label") == "Your label: " + ("A" if "BAD" in page.inner_text("#text-a") else "B") + " is better"
        _label_current(page, "GOOD", keys)
        page.wait_for_selector("body[data-state=done]")
        assert len(label_file.read_text().splitlines()) == 6

        bob_context = browser.new_context()
        bob_context.set_default_timeout(10_000)
        bob = bob_context.new_page()
        bob.goto(server.url + "?annotator=bob")
        bob.wait_for_selector("body[data-state=ready]")
        assert bob.get_attribute("body", "data-pair") == "0"  # annotators have separate files
        bob.keyboard.press("f")  # frame view instead of the video
        bob.wait_for_function("[...document.querySelectorAll('#frames img')].every(i => i.complete && i.naturalWidth > 0)")
        assert bob.locator("#frames img").count() == 8 and bob.is_hidden("#video")
        for prefer in ("GOOD", "BAD", "same", "BAD", "GOOD"):
            _label_current(bob, prefer, keys)
        bob.wait_for_selector("body[data-state=done]")
    finally:
        context.close()
        server.kill()

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    report = subprocess.run([sys.executable, "-m", "tarsier_hf.eval.side_by_side", "report", "--out", str(out), "--json", str(tmp_path / "r.json")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert report.returncode == 0, report.stderr
    # alice: win, win, same, loss, win; bob: win, loss, same, loss, win
    assert "| tarsier-good vs baseline-bad | alice | 5/5 | 60.0% | 20.0% | 20.0% | +40.0% |" in report.stdout
    assert "| tarsier-good vs baseline-bad | bob | 5/5 | 40.0% | 20.0% | 40.0% | +0.0% |" in report.stdout
    assert "| tarsier-good vs baseline-bad | pooled | 5/5 (10 labels) | 50.0% | 20.0% | 30.0% | +20.0% |" in report.stdout
    assert "| alice / bob | 5 | 80.0% | 0.688 |" in report.stdout
    numbers = json.loads((tmp_path / "r.json").read_text())[0]
    assert numbers["fleiss_kappa"] == pytest.approx((0.8 - 0.38) / (1 - 0.38))


def test_cli_reports_bad_input_with_exit_code_2(workdir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": "1", "prediction": "ok"}\n{oops\n')
    result = subprocess.run([sys.executable, "-m", "tarsier_hf.eval.side_by_side", "serve", "--results", str(broken), str(workdir["second"]),
                             "--videos", str(workdir["videos"]), "--out", str(tmp_path / "o"), "--port", "0"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and f"{broken}:2: not valid JSON" in result.stderr
    result = subprocess.run([sys.executable, "-m", "tarsier_hf.eval.side_by_side", "report", "--out", str(tmp_path / "missing")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "session file not found" in result.stderr


# ---------------------------------------------------------------------------------------------------------------
# Appendix D design: named annotators with disjoint shares (+ a shared overlap for agreement)
# ---------------------------------------------------------------------------------------------------------------
def test_assignment_deals_disjoint_shares_with_overlap(workdir, tmp_path):
    assert assign_pairs(7, ["x", "y", "z"], 1) == {"x": [0, 1, 4], "y": [0, 2, 5], "z": [0, 3, 6]}
    assert assign_pairs(4, [], 0) == {}
    with pytest.raises(SessionError, match="twice"):
        assign_pairs(4, ["x", "x"], 0)
    with pytest.raises(SessionError, match="--overlap must be between 0 and the number of pairs"):
        assign_pairs(4, ["x"], 5)
    with pytest.raises(SessionError, match="invalid annotator name"):
        sample_session(workdir["first"], workdir["second"], workdir["videos"], 4, annotators=["a/b"])
    session = open_session(tmp_path / "run", workdir["first"], workdir["second"], workdir["videos"], 5,
                           annotators=["x", "y"], overlap=1)
    assert [p.index for p in session.pairs_for("y")] == [0, 2, 4]
    with pytest.raises(SessionError, match="not in this session"):
        session.pairs_for("mallory")
    with pytest.raises(SessionError, match="different annotators"):
        open_session(tmp_path / "run", workdir["first"], workdir["second"], workdir["videos"], 5, annotators=["x"], overlap=1)
    store = LabelStore(tmp_path / "run", session)
    with pytest.raises(LabelError, match="pair 1 is not assigned to annotator 'y'"):
        store.add("y", 1, "A")
    store.add("x", 0, "same")
    store.add("y", 0, "same")
    store.add("y", 2, "A")
    rows = {row["annotator"]: row for row in analyse(tmp_path / "run", num_bootstrap=100)["rows"]}
    assert (rows["x"]["pairs"], rows["x"]["assigned"]) == (1, 3) and (rows["y"]["pairs"], rows["y"]["assigned"]) == (2, 3)
    assert (rows["pooled"]["judgments"], rows["pooled"]["assigned"]) == (3, 5)


@pytest.mark.slow
def test_browser_with_assigned_shares_posts_session_indices(workdir, tmp_path, browser):
    out = tmp_path / "run"
    session = open_session(out, workdir["first"], workdir["second"], workdir["videos"], 5, seed=0,
                           annotators=["x", "y"], overlap=1)
    server = AnnotationServer(session, out, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    context = browser.new_context()
    context.set_default_timeout(10_000)
    try:
        page = context.new_page()
        page.goto(server.url + "?annotator=mallory")  # not in the list: refused with the reason
        page.wait_for_selector("body[data-state=error]")
        assert "not in this session" in page.inner_text("#status")
        page.goto(server.url + "?annotator=y")
        page.wait_for_selector("body[data-state=ready]")
        assert page.inner_text("#progress") == "y · Pair 1 of 3 · 0 labelled"
        keys = {"A": "a", "B": "b", "same": "s"}
        _label_current(page, "GOOD", keys)
        page.reload()
        page.wait_for_selector("body[data-state=ready]")
        assert page.get_attribute("body", "data-pair") == "1" and page.inner_text("#text-a") == session.pairs[2].text_a
        _label_current(page, "BAD", keys)
        _label_current(page, "same", keys)
        page.wait_for_selector("body[data-state=done]")
    finally:
        context.close()
        server.shutdown()
        server.server_close()
    saved = [json.loads(line) for line in (out / "labels" / "y.jsonl").read_text().splitlines()]
    assert [(r["pair"], r["winner"]) for r in saved] == [(0, "model_1"), (2, "model_2"), (4, "same")]
    assert [r["id"] for r in saved] == [session.pairs[i].id for i in (0, 2, 4)]


# ---------------------------------------------------------------------------------------------------------------
# Hostile input: paths outside --videos, huge / slow / never-ending bodies, absurd Range headers, nested JSON, NaN
# ---------------------------------------------------------------------------------------------------------------
def test_videos_outside_the_video_folder_are_refused(workdir, tmp_path):
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(Path(workdir["videos"] / "clip0.mp4").read_bytes())
    (workdir["videos"] / "link_out.mp4").unlink(missing_ok=True)
    (workdir["videos"] / "link_out.mp4").symlink_to(outside)
    for name, video in (("absolute", "/etc/passwd"), ("dotdot", f"../../{tmp_path.name}/outside.mp4"),
                        ("symlink", "link_out.mp4")):
        records = [{"id": "0", "video": video, "prediction": "a"}]
        first = _write_jsonl(tmp_path / f"{name}_1.jsonl", records)
        second = _write_jsonl(tmp_path / f"{name}_2.jsonl", [{"id": "0", "prediction": "b"}])
        with pytest.raises(ResultsError, match="is outside the video folder"):
            sample_session(first, second, workdir["videos"], 0)
    (workdir["videos"] / "link_out.mp4").unlink()


def test_server_refuses_a_session_file_pointing_outside_the_video_folder(workdir, tmp_path):
    out = tmp_path / "run"
    open_session(out, workdir["first"], workdir["second"], workdir["videos"], 2, seed=0)
    data = json.loads((out / "session.json").read_text())
    data["pairs"][0]["video"] = "/etc/passwd"  # an edited (or old) session file
    (out / "session.json").write_text(json.dumps(data))
    server = AnnotationServer(load_session(out), out, port=0, frames=2)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        status, _, body = _request(server.url + "video/0")
        assert status == 403 and b"root:" not in body
        assert _request(server.url + "frames/0/0.jpg")[0] == 403
        assert _request(server.url + "video/1")[0] == 200
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def strict_server(workdir, tmp_path):
    out = tmp_path / "run"
    session = open_session(out, workdir["first"], workdir["second"], workdir["videos"], 4, seed=0)
    server = AnnotationServer(session, out, port=0, frames=2, request_timeout=1.0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, out
    server.shutdown()
    server.server_close()


def _raw(server, head: bytes, body: bytes = b"", drip: float | None = None, wait: float = 5.0) -> tuple[bytes, float]:
    """Send raw bytes (the body one byte every `drip` s when given); returns (the answer, seconds until it)."""
    import socket
    import time

    start = time.monotonic()
    with socket.create_connection(server.server_address, timeout=wait) as sock:
        sock.sendall(head)
        try:
            if drip is None:
                sock.sendall(body)
            else:
                for byte in body:
                    sock.sendall(bytes([byte]))
                    time.sleep(drip)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server already answered and closed
        answer = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
            if b"\r\n\r\n" in answer and b'"error"' in answer:
                break
    return answer, time.monotonic() - start


def _post_head(length: int | None) -> bytes:
    lines = [b"POST /api/label HTTP/1.1", b"Host: 127.0.0.1", b"Content-Type: application/json"]
    if length is not None:
        lines.append(b"Content-Length: %d" % length)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def test_label_bodies_are_capped_and_must_arrive_in_time(strict_server):
    server, out = strict_server
    answer, seconds = _raw(server, _post_head(300_000_000), b"x" * 1000)
    assert answer.startswith(b"HTTP/1.1 413") and seconds < 2
    answer, seconds = _raw(server, _post_head(100), b'{"annotator": ')  # the rest never comes
    assert answer.startswith(b"HTTP/1.1 408") and seconds < 3
    body = json.dumps({"annotator": "carol", "pair": 0, "label": "A"}).encode()
    answer, seconds = _raw(server, _post_head(len(body)), body, drip=0.3)  # 0.3 s per byte: each read is quick
    assert answer.startswith(b"HTTP/1.1 408") and seconds < 4
    assert _raw(server, _post_head(None), body)[0].startswith(b"HTTP/1.1 411")
    assert not (out / "labels" / "carol.jsonl").exists()
    assert _request(server.url + "api/session?annotator=carol")[0] == 200  # still serving


def test_absurd_range_headers_and_nested_json_get_an_answer(strict_server):
    server, out = strict_server
    size = len(Path(server.session.pairs[0].video).read_bytes())
    status, headers, _ = _request(server.url + "video/0", headers={"Range": "bytes=" + "9" * 5000 + "-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{size}"
    status, _, body = _request(server.url + "video/0", headers={"Range": "bytes=0-" + "9" * 5000})
    assert status == 206 and len(body) == size
    status, _, body = _request(server.url + "video/0", headers={"Range": "bytes=-" + "9" * 5000})
    assert status == 206 and len(body) == size
    assert _request(server.url + "video/" + "1" * 5000)[0] == 404
    nested = b"[" * 20_000 + b"]" * 20_000  # within the body cap, far beyond any parser's recursion limit
    status, _, body = _request(server.url + "api/label", nested, {"Content-Type": "application/json"}, "POST")
    assert status == 400 and b"nested too deeply" in body


@pytest.mark.parametrize("elapsed", ["NaN", "Infinity", "-Infinity", "1e400", '"fast"', "true"])
def test_only_finite_numbers_are_stored(strict_server, elapsed):
    server, out = strict_server
    body = b'{"annotator": "carol", "pair": 0, "label": "A", "elapsed_s": ' + elapsed.encode() + b"}"
    status, _, answer = _request(server.url + "api/label", body, {"Content-Type": "application/json"}, "POST")
    assert status == 400, answer
    assert not (out / "labels" / "carol.jsonl").exists()
    with pytest.raises(LabelError, match="finite number"):
        server.store.add("carol", 0, "A", float("nan"))
