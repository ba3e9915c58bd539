"""Inference: the video -> text engine shared by describe, the benchmark runners and the sweep."""
