// Blind A/B labelling page. State lives on the server: every label is POSTed and fsynced before the page moves on.
"use strict";

const KEY_LABELS = { a: "A", "1": "A", s: "same", "2": "same", "=": "same", b: "B", "3": "B" };
const LABEL_TEXT = { A: "A is better", B: "B is better", same: "Same quality" };

// `current` and the keys of `labels` are positions in this annotator's list of pairs (`pairs[k].index` is the
// session's pair index, which is what the server stores).
const state = { annotator: null, pairs: [], labels: new Map(), current: 0, busy: false, shownAt: 0, showFrames: false };
const $ = (id) => document.getElementById(id);

function setState(name) { document.body.dataset.state = name; }

function setStatus(message, isError = false) {
  $("status").textContent = message;
  $("status").classList.toggle("error", isError);
}

function firstUnlabelled(from = 0) {
  for (let k = 0; k < state.pairs.length; k++) {
    const index = (from + k) % state.pairs.length;
    if (!state.labels.has(index)) return index;
  }
  return state.pairs.length; // all labelled: the "done" view
}

function renderProgress() {
  const shown = state.current < state.pairs.length ? `Pair ${state.current + 1} of ${state.pairs.length}` : "Done";
  $("progress").textContent = `${state.annotator} · ${shown} · ${state.labels.size} labelled`;
}

function renderMedia(pair) {
  const video = $("video");
  if (video.dataset.pair !== String(pair.index)) {
    video.dataset.pair = String(pair.index);
    video.src = pair.video_url;
    $("frames").replaceChildren(...pair.frame_urls.map((url, k) => {
      const img = document.createElement("img");
      img.alt = `frame ${k + 1}`;
      img.loading = "lazy";
      img.dataset.src = url;
      return img;
    }));
  }
  video.hidden = state.showFrames;
  $("frames").hidden = !state.showFrames;
  if (state.showFrames) {
    for (const img of $("frames").querySelectorAll("img")) if (!img.src) img.src = img.dataset.src;
    video.pause();
  } else {
    video.play().catch(() => {}); // autoplay may be refused; the controls still work
  }
  $("toggle-frames").firstChild.textContent = state.showFrames ? "Show video " : "Show frames ";
}

function render() {
  renderProgress();
  const done = state.current >= state.pairs.length;
  $("task").hidden = done;
  $("done").hidden = !done;
  document.body.dataset.pair = done ? "done" : String(state.current);
  if (done) { $("video").pause(); setState("done"); return; }
  const pair = state.pairs[state.current];
  $("text-a").textContent = pair.text_a;
  $("text-b").textContent = pair.text_b;
  const label = state.labels.get(state.current);
  $("current-label").textContent = label ? `Your label: ${LABEL_TEXT[label]}` : "Not labelled yet";
  for (const button of document.querySelectorAll("#choices button")) {
    button.classList.toggle("chosen", button.dataset.label === label);
  }
  renderMedia(pair);
  state.shownAt = performance.now();
  setState("ready");
}

function go(index) {
  state.current = Math.max(0, Math.min(index, state.pairs.length));
  render();
}

async function submitLabel(label) {
  if (state.busy || state.current >= state.pairs.length) return;
  state.busy = true;
  setState("saving");
  const pairIndex = state.current;
  try {
    const response = await fetch("/api/label", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ annotator: state.annotator, pair: state.pairs[pairIndex].index, label,
                             elapsed_s: (performance.now() - state.shownAt) / 1000 }),
    });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
    state.labels.set(pairIndex, label);
    setStatus(`Saved pair ${pairIndex + 1}: ${LABEL_TEXT[label]}`);
    state.busy = false;
    go(firstUnlabelled(pairIndex + 1));
  } catch (error) {
    state.busy = false;
    setStatus(`NOT saved (${error.message}). Is the server running? Try again.`, true);
    setState("error");
  }
}

function onKey(event) {
  if (event.target instanceof HTMLInputElement || event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
  if (key in KEY_LABELS) { submitLabel(KEY_LABELS[key]); }
  else if (key === "ArrowLeft" || key === "p") { go(state.current - 1); }
  else if (key === "ArrowRight" || key === "n") { go(state.current + 1); }
  else if (key === "f") { state.showFrames = !state.showFrames; if (state.current < state.pairs.length) renderMedia(state.pairs[state.current]); }
  else if (key === " ") { const v = $("video"); v.paused ? v.play().catch(() => {}) : v.pause(); }
  else return;
  event.preventDefault();
}

async function start() {
  const annotator = new URLSearchParams(location.search).get("annotator");
  if (!annotator) {
    $("login").hidden = false;
    setState("login");
    $("login").addEventListener("submit", (event) => {
      event.preventDefault();
      location.search = "?annotator=" + encodeURIComponent($("annotator-name").value.trim());
    });
    return;
  }
  try {
    const response = await fetch("/api/session?annotator=" + encodeURIComponent(annotator), { cache: "no-store" });
    const data = await response.json();
    if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
    state.annotator = data.annotator;
    state.pairs = data.pairs;
    // Labels come keyed by session pair index; the page works with positions in this annotator's list.
    const position = new Map(state.pairs.map((pair, k) => [pair.index, k]));
    state.labels = new Map(Object.entries(data.labels).map(([index, label]) => [position.get(Number(index)), label]));
  } catch (error) {
    setStatus(`Cannot load the session: ${error.message}`, true);
    setState("error");
    return;
  }
  $("video").addEventListener("error", () => {
    // The browser cannot play this file (codec/container): fall back to decoded frames.
    // A failed save's message stays: when the server is gone the video fails too, and must not hide "NOT saved".
    if (!state.showFrames) {
      state.showFrames = true;
      if (document.body.dataset.state === "error") return;  // the next render shows the frames
      setStatus("This video cannot play here; showing its frames.");
      render();
    }
  });
  for (const button of document.querySelectorAll("#choices button")) {
    button.addEventListener("click", () => submitLabel(button.dataset.label));
  }
  $("prev").addEventListener("click", () => go(state.current - 1));
  $("next").addEventListener("click", () => go(state.current + 1));
  $("toggle-frames").addEventListener("click", () => onKey({ key: "f", target: document.body, preventDefault() {} }));
  document.addEventListener("keydown", onKey);
  if (state.labels.size > 0) $("guide").open = false; // resuming: the guide stays one click away
  go(firstUnlabelled(0));
}

start();
