"""Read benchmark result files (JSONL): one prediction per video, with lenient field names.

Accepted fields of every line (one JSON object per line; blank lines are skipped):

| field | accepted names (first found wins) | notes |
|---|---|---|
| id | `id`, `idx`, `vid` | string or integer; compared as a string |
| video | `video`, `video_path`, `video_file` | path relative to the video folder, or absolute |
| prediction | `prediction`, `description`, `response`, `output` | the generated description (a string) |
| model name | `model`, `model_name`, `checkpoint` | optional; the first line that has one names the file |

Anything else on a line is ignored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tarsier_hf.jsonl import read_jsonl_objects

ID_FIELDS = ("id", "idx", "vid")
VIDEO_FIELDS = ("video", "video_path", "video_file")
PREDICTION_FIELDS = ("prediction", "description", "response", "output")
MODEL_FIELDS = ("model", "model_name", "checkpoint")


class ResultsError(ValueError):
    """A result file or the video folder is unusable; the message names the file (and line) and the cause."""


@dataclass
class Prediction:
    """One line of a result file."""

    id: str
    video: str | None
    prediction: str
    line: int


@dataclass
class ResultFile:
    """All predictions of one model, keyed by id (insertion order = file order)."""

    path: Path
    model: str
    predictions: dict[str, Prediction]


def _first(record: dict, names: tuple[str, ...]):
    for name in names:
        if name in record and record[name] is not None:
            return name, record[name]
    return None, None


def load_results(path: str | os.PathLike, model: str | None = None) -> ResultFile:
    """Parse a result JSONL file.

    Args:
        path: the JSONL file.
        model: display name of the model; defaults to the file's `model`/`checkpoint` field, else the file stem.

    Raises:
        ResultsError: missing file, a line that is not a JSON object, a missing/ill-typed field or a duplicate
            id, always as `file:line: cause`.
    """
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"{path}: result file not found")
    predictions: dict[str, Prediction] = {}
    found_model = None
    for line_number, record in read_jsonl_objects(path, ResultsError):
        where = f"{path}:{line_number}"
        id_name, raw_id = _first(record, ID_FIELDS)
        if id_name is None:
            raise ResultsError(f"{where}: no id field (expected one of {', '.join(ID_FIELDS)})")
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
            raise ResultsError(f"{where}: field '{id_name}' must be a string or an integer, got {raw_id!r}")
        pred_name, text = _first(record, PREDICTION_FIELDS)
        if pred_name is None:
            raise ResultsError(f"{where}: no prediction field (expected one of {', '.join(PREDICTION_FIELDS)})")
        if not isinstance(text, str):
            raise ResultsError(f"{where}: field '{pred_name}' must be a string, got {type(text).__name__}")
        video_name, video = _first(record, VIDEO_FIELDS)
        if video_name is not None and not isinstance(video, str):
            raise ResultsError(f"{where}: field '{video_name}' must be a string path, got {video!r}")
        key = str(raw_id)
        if key in predictions:
            raise ResultsError(f"{where}: duplicate id {key!r} (first seen on line {predictions[key].line})")
        predictions[key] = Prediction(id=key, video=video, prediction=text, line=line_number)
        if found_model is None:
            _, value = _first(record, MODEL_FIELDS)
            if isinstance(value, str) and value.strip():
                found_model = value.strip()
    if not predictions:
        raise ResultsError(f"{path}: no predictions (the file is empty)")
    return ResultFile(path=path, model=model or found_model or path.stem, predictions=predictions)


def resolve_video(video_dir: Path, first: Prediction, second: Prediction, first_file: Path, second_file: Path) -> Path:
    """The video file of one id, from whichever result file names it; both must agree when both do.

    Raises:
        ResultsError: neither file names a video, the two name different files, the file is missing, or it lies
            outside `video_dir` (after resolving `..` and symbolic links: the server hands out only that folder).
    """
    candidates = []
    for prediction, source in ((first, first_file), (second, second_file)):
        if prediction.video:
            candidate = Path(prediction.video)
            candidates.append((candidate if candidate.is_absolute() else video_dir / candidate, source, prediction))
    if not candidates:
        raise ResultsError(
            f"{first_file}:{first.line} and {second_file}:{second.line}: id {first.id!r} has no video field "
            f"(expected one of {', '.join(VIDEO_FIELDS)})"
        )
    path, source, prediction = candidates[0]
    for other, other_source, other_prediction in candidates[1:]:
        if os.path.normpath(other) != os.path.normpath(path):
            raise ResultsError(
                f"id {first.id!r}: the result files name different videos: {path} ({source}:{prediction.line}) "
                f"vs {other} ({other_source}:{other_prediction.line})"
            )
    if not is_inside(path, video_dir):
        raise ResultsError(
            f"{source}:{prediction.line}: video of id {first.id!r} is outside the video folder {video_dir.resolve()}: "
            f"{path}; only files under --videos are served (pass the folder that holds the videos)"
        )
    if not path.is_file():
        raise ResultsError(f"{source}:{prediction.line}: video of id {first.id!r} not found: {path}")
    return path.resolve()


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether `path` resolves (symbolic links and `..` followed) to somewhere inside `folder`."""
    return Path(path).resolve().is_relative_to(Path(folder).resolve())
