"""Report tables and plots in the paper's layouts: Table 3 (DREAM-1K), Figure 5 (F1 vs complexity), Table 5.

    # compare several runs the way the paper does (or `python -m tarsier_hf.eval.report ...`)
    tarsier-report --results runs/tarsier-7b/results.json runs/other/results.json --table table3.md --figure fig5.png
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from transformers import HfArgumentParser

from tarsier_hf.cli import help_text

# DREAM-1K `dataset` values -> Table 3 column titles, in the paper's order.
DREAM_CATEGORIES = (
    ("movie_live_action", "Live-action"),
    ("movie_animation", "Animation"),
    ("youtube", "YouTube"),
    ("shorts", "Shorts"),
    ("stock", "Stock"),
)
COMPLEXITY_AXES = (("events", "Number of events"), ("subjects", "Number of subjects"), ("shots", "Number of shots"))


# Later names of the same categories: the DREAM-1K re-release in Tarsier2's annotation files
# (bytedance/tarsier, branch tarsier2, data/annotations/DREAM-1k.jsonl) calls Shorts and Stock so.
CATEGORY_ALIASES = {"vertical_video": "shorts", "videvo": "stock"}


def category_key(dataset: str | None) -> str:
    """`"DREAM/movie_live_action"` -> `"movie_live_action"`; a later name maps to the paper's (`CATEGORY_ALIASES`)."""
    key = (dataset or "").rsplit("/", 1)[-1]
    return CATEGORY_ALIASES.get(key, key)


def _cell(stats: dict | None) -> str:
    if not stats or stats.get("f1") is None:
        return "-"
    return f"{100 * stats['f1']:.1f}/{100 * stats['precision']:.1f}/{100 * stats['recall']:.1f}"


def table3_markdown(rows: Sequence[tuple[str, dict]]) -> str:
    """Table 3: one row per model, `F1/P/R` (in %) per category and overall.

    Args:
        rows: `(model name, scores)` where `scores` has `per_category` (`{category: {recall, precision, f1}}`,
            keys as in `DREAM_CATEGORIES` or full `DREAM/...` names) and `overall`.
    """
    known = [key for key, _ in DREAM_CATEGORIES]
    # categories of a later revision that the paper does not name get their own columns, never dropped
    extra = sorted({category_key(k) for _, scores in rows for k in (scores.get("per_category") or {})} - set(known))
    header = ["Model"] + [title for _, title in DREAM_CATEGORIES] + extra + ["Overall"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, scores in rows:
        per_category = {category_key(k): v for k, v in (scores.get("per_category") or {}).items()}
        cells = [_cell(per_category.get(key)) for key in known + extra] + [_cell(scores.get("overall"))]
        lines.append("| " + " | ".join([name] + cells) + " |")
    lines.append("")
    lines.append("F1/Precision/Recall (%) by AutoDQ; Overall is DREAM-1K's macro average over the categories present.")
    return "\n".join(lines) + "\n"


def plot_complexity(rows: Sequence[tuple[str, dict]], path: str | Path) -> Path:
    """Figure 5: F1 (%) against the number of events, subjects and shots, one line per model.

    Args:
        rows: `(model name, breakdowns)` with `breakdowns[axis][bucket] = {"f1", "n", ...}` (tarsier_hf.eval.autodq buckets).
        path: PNG file to write.
    """
    import matplotlib  # optional: the `eval` extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(COMPLEXITY_AXES), figsize=(4.2 * len(COMPLEXITY_AXES), 3.6), squeeze=False)
    for axis, (key, title) in zip(axes[0], COMPLEXITY_AXES):
        for name, breakdowns in rows:
            buckets = (breakdowns or {}).get(key) or {}
            labels = list(buckets)
            values = [100 * b["f1"] if b.get("f1") is not None else float("nan") for b in buckets.values()]
            axis.plot(range(len(labels)), values, marker="o", label=name)
            axis.set_xticks(range(len(labels)), labels)
        axis.set_xlabel(title)
        axis.set_ylabel("F1 (%)")
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.suptitle("DREAM-1K: description quality vs video complexity")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def table5_markdown(results: Sequence[dict]) -> str:
    """Table 5's three blocks from result files of `tarsier_hf.eval.mcqa`, `tarsier_hf.eval.captioning` and `tarsier_hf.eval.openqa`.

    Every result needs `model`, `benchmark` and `task` (`mcqa`: accuracy %, `captioning`: CIDEr x100 as the
    paper prints it, `openqa`: accuracy %/score).
    """
    blocks = {"mcqa": "(a) Multi-choice QA accuracy (%)", "captioning": "(b) Zero-shot captioning CIDEr",
              "openqa": "(c) Open-ended QA accuracy (%) / score (0-5)"}
    out = []
    for task, title in blocks.items():
        mine = [r for r in results if r.get("task") == task]
        if not mine:
            continue
        benchmarks = list(dict.fromkeys(r["benchmark"] for r in mine))
        models = list(dict.fromkeys(r["model"] for r in mine))
        out.append(f"{title}\n")
        out.append("| Model | " + " | ".join(benchmarks) + " |")
        out.append("|" + "---|" * (len(benchmarks) + 1))
        for model in models:
            cells = []
            for bench in benchmarks:
                found = [r for r in mine if r["model"] == model and r["benchmark"] == bench]
                cells.append(_table5_cell(found[-1]) if found else "-")
            out.append(f"| {model} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out) + "\n"


def _table5_cell(result: dict) -> str:
    if result["task"] == "mcqa":
        return f"{100 * result['accuracy']:.1f}"
    if result["task"] == "captioning":
        return f"{100 * result['cider']:.1f}"
    return f"{100 * result['accuracy']:.1f}/{result['score']:.1f}"


@dataclass
class ReportArguments:
    """Paper-layout tables and Figure 5 from eval result files (Table 3 printed when no output is named)."""

    results: list[str] = field(metadata={"help": "results.json files written by the eval runners"})
    table: str | None = field(default=None, metadata={"help": "write DREAM-1K Table 3 (markdown) here"})
    figure: str | None = field(default=None, metadata={"help": "write Figure 5 (PNG) here"})
    table5: str | None = field(default=None, metadata={"help": "write Table 5 (markdown) here from QA / captioning results"})


def main(argv: list[str] | None = None) -> None:
    parser = HfArgumentParser(ReportArguments, **help_text(
        "Turn eval runners' results.json files into the paper's layouts: Table 3 (DREAM-1K), Figure 5 and Table 5 "
        "(printed: Table 3).",
        "tarsier-report --results runs/a/results.json runs/b/results.json --table table3.md --figure fig5.png",
        usage="%(prog)s --results FILE [FILE ...] [--table FILE] [--figure FILE] [--table5 FILE]"))
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    loaded = [json.loads(Path(p).read_text()) for p in args.results]
    dream = [(r.get("model") or r["run"]["checkpoint"], r) for r in loaded if r.get("benchmark") == "dream1k"]
    if args.table:
        Path(args.table).write_text(table3_markdown([(n, r["scores"]) for n, r in dream]))
    if args.figure:
        plot_complexity([(n, r["scores"].get("breakdowns")) for n, r in dream], args.figure)
    if args.table5:
        Path(args.table5).write_text(table5_markdown([r for r in loaded if r.get("task") in ("mcqa", "captioning", "openqa")]))
    if not (args.table or args.figure or args.table5):
        print(table3_markdown([(n, r["scores"]) for n, r in dream]))


if __name__ == "__main__":
    main()
