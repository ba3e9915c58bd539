"""What every phase of the tiny recipe shares: where the recipe lives, its log lines, its timer and its subprocesses."""

from __future__ import annotations

import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes" / "tiny"
TEST_PROMPT = "Describe the video in detail."


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
