"""Checkpoint conversion (released Tarsier -> this format), model cards and publishing to the Hub."""
