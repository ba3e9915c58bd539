"""Dataset builders: synthetic videos and training/evaluation data in Tarsier's conversation format."""
