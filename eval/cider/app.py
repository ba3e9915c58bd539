"""Gradio Space for the CIDEr-D metric (the evaluate metric-card widget)."""

import os

import evaluate
from evaluate.utils import launch_gradio_widget

# On a Space the module is the Space itself (SPACE_ID = "owner/name"); locally, this folder.
module = evaluate.load(os.environ.get("SPACE_ID") or os.path.dirname(os.path.abspath(__file__)))
launch_gradio_widget(module)
