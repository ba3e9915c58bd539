"""tarsier-hf: training, inference, datasets and publishing around the remote-code Tarsier model files."""
