"""Inference: the video -> text engine (`engine`) shared by batch description (`describe`), the OpenAI-compatible
server (`serve`), the benchmark runners and the sweep."""
