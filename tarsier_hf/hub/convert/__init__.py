"""Released Tarsier and Tarsier2 checkpoints <-> this repository's format (`tarsier-convert`, `__main__.py`)."""
