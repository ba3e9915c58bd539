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

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
from pathlib import Path

# The remote-code modules are the top-level `*_tarsier*` modules (`modeling_tarsier`, ...: setup.cfg `py_modules`),
# installed beside this package: in site-packages, or at the repo root for an editable install.
LIBRARY_DIR = Path(__file__).resolve().parent.parent


class LibraryRemoteCode(importlib.abc.MetaPathFinder):
    """Imports the remote-code modules (`LIBRARY_DIR/*_tarsier*.py`) from the library's own files, whatever comes
    first on `sys.path`.

    `python -m tarsier_hf...` puts the working directory first on `sys.path`, so started inside a checkpoint folder
    it would import that folder's copies of `modeling_tarsier.py` & co. (code that came with downloaded weights)
    without `--trust_remote_code`. A checkpoint's own code runs only by that consent, through transformers'
    remote code (its modules are `transformers_modules.*`, which this finder leaves alone). A file that would
    have shadowed the library's with different contents is named in a warning.
    """

    def find_spec(self, name, path=None, target=None):
        if path is not None or "_tarsier" not in name:
            return None
        own = LIBRARY_DIR / f"{name}.py"
        if not own.is_file():
            return None
        shadow = importlib.machinery.PathFinder.find_spec(name)
        origin = Path(shadow.origin).resolve() if shadow is not None and shadow.origin else own
        if origin != own and (not origin.is_file() or origin.read_bytes() != own.read_bytes()):
            logging.getLogger(__name__).warning(
                "%s shadows the library's %s on sys.path (the working directory?) and is ignored: %s is imported. "
                "A checkpoint's own code runs only with --trust_remote_code.", origin, name, own)
        return importlib.util.spec_from_file_location(name, own)


if not any(isinstance(finder, LibraryRemoteCode) for finder in sys.meta_path):
    sys.meta_path.insert(0, LibraryRemoteCode())
