"""Describing videos with a trained checkpoint: batch description and the OpenAI-compatible server."""
