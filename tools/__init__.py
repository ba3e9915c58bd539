"""Command-line tools and helpers around Tarsier checkpoints (conversion, local models, description)."""
