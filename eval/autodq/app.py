"""Gradio Space for the AutoDQ metric (the standard `evaluate` metric widget).

The judge defaults to OpenAI's gpt-3.5-turbo-0125: set the OPENAI_API_KEY secret of the Space.
"""

from pathlib import Path

import evaluate
from evaluate.utils import launch_gradio_widget

# Loaded by file: a Space's folder name is arbitrary, so `evaluate.load(folder)` would look for the wrong script.
module = evaluate.load(str(Path(__file__).resolve().with_name("autodq.py")))
launch_gradio_widget(module)
