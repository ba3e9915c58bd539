"""Evaluation (installed as `tarsier_hf.eval`): benchmark runners, the AutoDQ and CIDEr `evaluate` modules, the A/B page."""
