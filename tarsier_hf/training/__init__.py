"""Training support for `train_sft.py`: data readers and mixing, the video-aware collator, model building."""
