"""Blind side-by-side (A/B) human evaluation of two models' video descriptions (Tarsier paper §5.1.2, App. D).

`python -m tarsier_hf.eval.side_by_side serve --results RESULTS_1 RESULTS_2 --videos DIR --output_dir OUT` samples videos present in both
result files, records a random A/B order per pair in `OUT/session.json` and serves a labelling page on
127.0.0.1; every label is appended and fsynced to `OUT/labels/<annotator>.jsonl` as it is made.
`python -m tarsier_hf.eval.side_by_side report OUT [OUT ...]` prints win / same / loss, the advantage rate with a
bootstrap interval (per annotator and pooled, Table 4's layout) and the agreement between annotators.
"""

from .report import analyse, report, to_markdown
from .results import ResultsError, load_results
from .session import Pair, Session, SessionError, load_session, open_session, sample_session

__all__ = [
    "Pair", "ResultsError", "Session", "SessionError", "analyse", "load_results", "load_session", "open_session",
    "report", "sample_session", "to_markdown",
]
