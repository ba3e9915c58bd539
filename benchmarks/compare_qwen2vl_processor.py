"""A converted Tarsier2 folder as plain Qwen2-VL against its own Tarsier2 processor (issue #35). Needs torchvision.

transformers' `Qwen2VLVideoProcessor` needs torchvision, so this runs in a side environment, never in CI:

    python3 -m venv /tmp/tv-venv
    /tmp/tv-venv/bin/pip install torch torchvision transformers==5.23.0 av pillow numpy safetensors tokenizers jinja2
    /tmp/tv-venv/bin/python -I benchmarks/compare_qwen2vl_processor.py --folder tarsier2-recap-7b-hf \
        --video demo_test.mp4

It imports nothing from this repository (`-I`): the folder's processor is loaded twice,

- `AutoProcessor.from_pretrained(folder)`: must be transformers' own `Qwen2VLProcessor` (no remote code), with the
  folder's min / max pixels in its image and video processors;
- `AutoProcessor.from_pretrained(folder, trust_remote_code=True)`: must be the folder's `Tarsier2Processor`
  (`processing_tarsier2.py` travelling with the folder), the release's path: 16 frames by the v1 rule, every frame
  resized first to at most 460,800 pixels, every frame given twice.

The Tarsier2 processor samples and decodes the video; the plain processor gets the same frames as a plain Qwen2-VL
user must give them to match the release: each sampled frame twice (`[f0, f0, f1, f1, ...]`), and (`pre-resized`)
each frame first resized with PIL bicubic to the release's size (Qwen2-VL's `smart_resize` with factor 1 and at
most `min(460800, 128 * 384 * 384 // (2 * frames))` pixels), or (`as decoded`) not. Printed per case: the grids,
whether `input_ids` agree, the max abs difference of `pixel_values_videos` (transformers resizes with torchvision's
bicubic, the release and this repository with PIL's: a few levels of rounding), and the time of each processor
call (the Tarsier2 one includes decoding the file). The chat template check renders a video message with the plain
processor.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from PIL import Image
from transformers import AutoProcessor

VIDEO_RUN = "<|vision_start|><|video_pad|><|vision_end|>"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", required=True, help="a converted Tarsier2 folder (tarsier-convert)")
    parser.add_argument("--video", required=True, help="a video file")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    plain = AutoProcessor.from_pretrained(args.folder)
    ours = AutoProcessor.from_pretrained(args.folder, trust_remote_code=True)
    video = ours.video_processor
    results = {
        "plain": [type(plain).__name__, type(plain.image_processor).__name__, type(plain.video_processor).__name__],
        "remote": [type(ours).__name__, type(ours.image_processor).__name__, type(video).__name__],
        "remote_module": sys.modules[type(ours).__module__].__file__,
        "pixel_bounds": {
            "checkpoint": [video.min_pixels, video.max_pixels],
            "plain_image": [plain.image_processor.size.shortest_edge, plain.image_processor.size.longest_edge],
            "plain_video": [plain.video_processor.size.shortest_edge, plain.video_processor.size.longest_edge],
        },
        "release_defaults": {"frame_sampling": video.frame_sampling.to_dict(),
                             "duplicate_frames": video.duplicate_frames,
                             "frame_pre_resize_max_pixels": video.frame_pre_resize_max_pixels},
    }
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Describe the video."}]}]
    text = plain.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    results["template_video_run"] = VIDEO_RUN in text and "<|image_pad|>" not in text

    # the Tarsier2 processor: the release's sampling and resizing, from the file
    start = time.perf_counter()
    expected = ours(text=text, videos=[args.video], return_tensors="np", return_metadata=True)
    remote_s = time.perf_counter() - start
    load_video = sys.modules[type(video).__module__].load_video  # the reader the remote code uses
    sample = load_video(args.video, video.frame_sampling)
    assert list(sample.indices) == expected["video_metadata"][0].frames_indices
    frames = sample.frames
    (h1, w1), _ = video.frame_sizes(frames.shape[1], frames.shape[2], num_images=2 * len(frames))
    pre_resized = np.stack([np.asarray(Image.fromarray(f).resize((w1, h1), resample=Image.Resampling.BICUBIC))
                            for f in frames])
    results.update(frames=len(frames), frame_indices=list(map(int, sample.indices)),
                   decoded_hw=list(frames.shape[1:3]), pre_resized_hw=[h1, w1],
                   tarsier2_call={"grid": expected["video_grid_thw"].tolist(), "seconds": round(remote_s, 3)})

    for case, given in (("pre-resized", pre_resized), ("as decoded", frames)):
        doubled = np.repeat(given, 2, axis=0)  # each frame twice, in order
        start = time.perf_counter()
        out = plain(text=text, videos=[doubled], return_tensors="np")
        seconds = time.perf_counter() - start
        same_grid = out["video_grid_thw"].tolist() == expected["video_grid_thw"].tolist()
        entry = {"grid": out["video_grid_thw"].tolist(), "same_grid": same_grid,
                 "same_input_ids": same_grid and np.array_equal(out["input_ids"], expected["input_ids"]),
                 "seconds": round(seconds, 3)}
        if same_grid:
            diff = np.abs(out["pixel_values_videos"].astype(np.float64) - expected["pixel_values_videos"])
            entry.update(max_abs_diff=round(float(diff.max()), 4), mean_abs_diff=round(float(diff.mean()), 5))
        results[case] = entry

    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return results


if __name__ == "__main__":
    main()
