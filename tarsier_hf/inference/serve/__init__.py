"""Serve a Tarsier or Tarsier2 (Qwen2-VL) checkpoint, or any plain causal LM, on the OpenAI chat-completions protocol.

    python -m tarsier_hf.inference.serve --model_name_or_path FOLDER_OR_HUB_ID [--host 127.0.0.1] [--port 8000] \\
        [--allowed_local_media_path DIR] [--device auto] [--dtype auto] [--max_new_tokens 512]

Endpoints: `POST /v1/chat/completions` (streaming with `"stream": true`), `GET /v1/models`, `GET /health`.
A user message's content parts may be `text`, `image_url` and `video_url` (`{"video_url": {"url": ...}}`, the
extension vLLM and `transformers serve` use); a URL is a `data:` URI (`data:image/png;base64,...`,
`data:video/mp4;base64,...`, or base64 JPEG frames `data:video/jpeg;base64,<frame>,<frame>,...`), or, only under
`--allowed_local_media_path`, a `file://` URL or a plain path. Frame sampling follows the checkpoint's processor;
a request can override it with `"mm_processor_kwargs": {"num_frames": 16}` (also `fps`, or a whole
`frame_sampling` object such as `{"policy": "fps", "fps": 2, "max_frames": 32}`), sent by the `openai` client
through `extra_body`. Also honoured: `n` (with sampling), `logprobs` / `top_logprobs`, `frequency_penalty` /
`presence_penalty` (OpenAI's additive penalties), `seed`, `stop`. A request that cannot be read (unknown or
malformed fields, unreadable video, missing file, a video for a text-only model, anything past a limit of
`ServeLimits`) gets a 400 naming the field, in OpenAI's error format; a body over `--max_request_mb` gets a 413.
Media are decoded by the server (`load_media`: one self-contained file each, allow-listed demuxers, bounded
pixels), then encoded by the checkpoint's processor. Requests that arrive together are batched into one
left-padded `generate` (`Engine`: `--max_batch_size` rows, waiting at most `--batch_window_ms` for requests still
being read); up to `--max_concurrent_generations` batches run at once, each on its own thread; each request is
answered when its own rows are done, and a client that leaves (streaming or not) ends its rows without stopping
the rest of the batch.

Why not `transformers serve` (transformers 5.23, `transformers/cli/serving/model_manager.py`): it builds the model
with `AutoModelForMultimodalLM` only when `config.model_type` is in the library's static
`MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES`, and otherwise with `getattr(transformers, config.architectures[0])`; its
modality check (`get_model_modality`) looks the class name up in the static `*_MAPPING_NAMES` tables. Registering
a remote-code class (`AutoModelForImageTextToText.register`) fills neither, so a remote-code model cannot pass
without patching library globals. It also answers unreadable media with a 500 and samples 32 frames from every
video. It serves plain causal LMs well (the AutoDQ judge tests use it for SmolLM2); this server covers both.

The package, one job a module: `protocol` (the request's fields and their bounds, `ServeLimits`, `RequestError`
and OpenAI's error body), `media` (messages -> a conversation: local paths allow-listed, frame sampling, media
decoded under the limits, the processor's encoding), `sampling` (a row's own sampling, log-probabilities and
penalties inside a batch), `batching` (`BatchScheduler` and the rows of a batch), `engine` (`Engine`: the model;
prepare, generate, finish), `app` (`create_app`: the endpoints, streaming, the body limit), `__main__`
(`ServeArguments` and `main`, the `tarsier-serve` command).
"""
