"""Evaluation: AutoDQ and CIDEr `evaluate` modules and the benchmark runners (`python -m eval.<runner>`)."""
