"""Hugging Face-native Tarsier: everything beside the remote-code model files.

- `tarsier_hf.training`: data readers and mixing, the video collator, model building, the TRL trainer, stage 0
- `tarsier_hf.dream_s`: the DREAM-S synthetic video dataset (and its H.264 writer)
- `tarsier_hf.inference`: the video -> text engine (`engine`), batch description (`describe`) and the
  OpenAI-compatible server (`serve`)
- `tarsier_hf.hub`: checkpoint conversion, model cards and publishing
- `tarsier_hf.tiny_recipe`: the tiny recipe end to end (`python -m tarsier_hf.tiny_recipe`) and its sweeps
- `tarsier_hf.chat_templates`: the processor's chat templates (`.jinja`, saved with a checkpoint)
- `tarsier_hf.eval`: the repo's `eval/` folder (benchmark runners, AutoDQ and CIDEr, the A/B page)
"""
