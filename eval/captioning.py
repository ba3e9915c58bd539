"""Zero-shot video captioning (MSVD, MSR-VTT, VATEX) scored with the CIDEr module (`eval/cider`).

    python -m tarsier_hf.eval.captioning --model_name_or_path path/to/tarsier --format msrvtt --annotations MSRVTT/test_videodatainfo.json \
        --videos MSRVTT/videos --output_dir runs/msrvtt_caption

Readers:
- `msvd`: `AllVideoDescriptions.txt` (`<video name> <caption>` per line, `#` comments) or a generic JSON;
- `msrvtt`: `{"videos": [{"video_id", "split"}], "sentences": [{"video_id", "caption"}]}` (`--split test`);
- `vatex`: `[{"videoID", "enCap": [...]}]`;
- `generic`: `{video: [captions]}` or `[{"video", "captions"}]`.
The reported CIDEr is the module's corpus score (document frequencies from the evaluated references, as
coco-caption); Table 5b prints it x100.

Before the model loads, the output folder and every video are checked (tarsier_hf.eval.common.preflight): missing
videos are listed in one report (scored as empty captions), and a run none of whose videos exist stops. `--videos`
may be left out when the annotations name video paths that resolve as they are.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from tarsier_hf.cli import consent_boundary, help_text
from tarsier_hf.eval.common import (LoggingArguments, ModelArguments, configure_logging, find_video_file,
                                    generate_predictions, missing_videos, predictions_of, preflight, result_header,
                                    unreadable_videos)
from tarsier_hf.inference.batch import get_state
from tarsier_hf.eval.prompts import caption_prompt, frames_for
from tarsier_hf.jsonl import write_json
from tarsier_hf.inference.engine import VideoRequest

logger = logging.getLogger(__name__)

FORMATS = ("msvd", "msrvtt", "vatex", "generic")
CIDER_MODULE = Path(__file__).resolve().parent / "cider"


@dataclass
class CaptionSample:
    id: str
    video: str
    references: list[str]


def load_references(fmt: str, annotations: str, split: str | None = "test") -> dict[str, list[str]]:
    """`{video name: [reference captions]}` in file order."""
    fmt = fmt.lower().replace("-", "")
    if fmt not in FORMATS:
        raise ValueError(f"unknown captioning format {fmt!r}; expected one of {FORMATS}")
    path = Path(annotations)
    refs: dict[str, list[str]] = defaultdict(list)
    if fmt == "msvd" and path.suffix == ".txt":
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip() or line.startswith("#"):
                continue
            name, _, caption = line.strip().partition(" ")
            if not caption:
                raise ValueError(f"{path}:{number}: expected '<video name> <caption>'")
            refs[name].append(caption)
        return dict(refs)
    data = json.loads(path.read_text(encoding="utf-8"))
    if fmt == "msrvtt":
        if not isinstance(data, dict) or "sentences" not in data:
            raise ValueError(f"{path}: expected MSR-VTT's {{'videos': [...], 'sentences': [...]}}")
        keep = None
        if split and "videos" in data:
            keep = {v["video_id"] for v in data["videos"] if v.get("split", split) == split}
        for sentence in data["sentences"]:
            if keep is None or sentence["video_id"] in keep:
                refs[sentence["video_id"]].append(sentence["caption"])
        return dict(refs)
    if fmt == "vatex":
        for number, item in enumerate(data):
            if "videoID" not in item or "enCap" not in item:
                raise ValueError(f"{path}[{number}]: expected 'videoID' and 'enCap'")
            refs[item["videoID"]].extend(item["enCap"])
        return dict(refs)
    if isinstance(data, dict):
        return {str(k): [str(c) for c in v] for k, v in data.items()}
    for number, item in enumerate(data):
        if "video" not in item or "captions" not in item:
            raise ValueError(f"{path}[{number}]: expected 'video' and 'captions'")
        refs[str(item["video"])].extend(item["captions"])
    return dict(refs)


def load_samples(fmt: str, annotations: str, videos: str | None, split: str | None = "test") -> list[CaptionSample]:
    references = load_references(fmt, annotations, split)
    empty = [k for k, v in references.items() if not v]
    if empty:
        raise ValueError(f"{annotations}: videos without reference captions: {empty[:5]}")
    return [CaptionSample(name, str(find_video_file(videos, name) or Path(videos or "") / f"{name}.mp4"), caps)
            for name, caps in references.items()]


def score_cider(samples: list[CaptionSample], predictions: dict[str, str], document_frequencies=None) -> dict:
    """Corpus CIDEr-D over every sample; a sample without a prediction scores as an empty caption."""
    import evaluate  # optional: the `eval` extra

    metric = evaluate.load(str(CIDER_MODULE))
    result = metric.compute(
        predictions=[predictions.get(s.id, "") for s in samples],
        references=[s.references for s in samples],
        document_frequencies=document_frequencies,
    )
    return result


@dataclass
class CaptioningArguments:
    format: str = field(metadata={"help": f"One of {FORMATS}."})
    annotations: str = field(metadata={"help": "Reference caption file."})
    output_dir: str = field(metadata={"help": "Folder for predictions.jsonl and results.json."})
    videos: str | None = field(default=None, metadata={
        "help": "Video folder (not needed when the annotations' video names are paths that resolve)."})
    split: str | None = field(default="test", metadata={"help": "MSR-VTT split to keep."})
    prompt: str = field(default="caption-v1", metadata={"help": "tarsier_hf.eval.prompts template name or the prompt text."})
    document_frequencies: str | None = field(default=None, metadata={"help": "Saved CIDEr document frequencies."})
    model_name: str | None = field(default=None, metadata={"help": "Row name in Table 5 (default: checkpoint)."})


def evaluate_captioning(data: CaptioningArguments, model_args: ModelArguments, model=None, processor=None,
                        progress: bool = True) -> dict | None:
    state = get_state()
    samples = load_samples(data.format, data.annotations, data.videos, data.split)
    if model_args.limit is not None:
        samples = samples[: model_args.limit]
    frames = model_args.num_frames or frames_for(model_args.model_preset, data.format)
    settings = model_args.inference_settings(frames)
    prompt = caption_prompt(data.prompt)
    requests = [VideoRequest(s.id, s.video, prompt) for s in samples]
    missing = missing_videos(requests)
    preflight(data.format, data.output_dir, len(requests), missing, data.videos, report=state.is_main_process,
              packages=("evaluate", "datasets"))
    output_dir = Path(data.output_dir)
    outputs = generate_predictions(requests, output_dir, model_args, settings, model, processor, progress, state)
    if outputs is None:
        return None
    predictions = predictions_of(outputs)
    cider = score_cider(samples, predictions, data.document_frequencies)
    results = {
        **result_header(data.format, "captioning", data.model_name, model_args, settings),
        "prompt": prompt, "judge": None, "metric": "CIDEr-D (eval/cider)",
        "cider": cider["cider"], "n": len(samples), "n_predictions": len(predictions),
        "document_frequency_source": cider.get("document_frequency_source"),
        "missing_videos": missing,
        "unreadable_videos": unreadable_videos(outputs),
        "samples": [{"id": s.id, "prediction": predictions.get(s.id), "cider": score}
                    for s, score in zip(samples, cider["scores"])],
    }
    write_json(output_dir / "results.json", results)
    return results


@consent_boundary
def main(argv: list[str] | None = None) -> None:
    parser = HfArgumentParser((CaptioningArguments, ModelArguments, LoggingArguments), **help_text(
        "Caption every video of a captioning benchmark (MSVD, MSR-VTT, VATEX) with a checkpoint and write "
        "predictions and CIDEr into --output_dir.",
        "tarsier-captioning --model_name_or_path tarsier-7b --format msrvtt "
        "--annotations MSRVTT/test_videodatainfo.json --videos MSRVTT/videos "
        "--output_dir runs/msrvtt",
        usage="%(prog)s --model_name_or_path MODEL --format FORMAT --annotations PATH --output_dir DIR [options]"))
    data, model_args, log_args = parser.parse_args_into_dataclasses(args=argv)
    configure_logging(log_args)
    results = evaluate_captioning(data, model_args)
    if results is not None:
        print(f"{data.format}: CIDEr {100 * results['cider']:.1f} (n={results['n']}, "
              f"{len(results['unreadable_videos'])} unreadable videos)")


if __name__ == "__main__":
    main()
