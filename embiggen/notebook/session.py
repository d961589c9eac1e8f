"""A notebook's first cell: `preset = setup()` prints the versions, picks the preset, device and
thread count, and seeds everything."""

from __future__ import annotations

import platform

import matplotlib
import torch
import transformers
from IPython import get_ipython

from embiggen import __version__
from embiggen.errors import UserError
from embiggen.presets import get_preset
from embiggen.utils import pick_device, set_seed, set_threads


def setup(preset=None, seed: int | None = None, base: str | None = None):
    """Print versions, pick the preset (and the pretrained `base` model to start from, else
    $EMBIGGEN_BASE, else the embedded one), device and thread count, seed everything."""
    shell = get_ipython()
    if shell is not None:  # a problem the learner can fix reads as one line, not a traceback
        shell.set_custom_exc((UserError,), _one_line_error)
    preset = get_preset(preset, base)
    transformers.logging.disable_progress_bar()  # our own bars are enough
    threads = set_threads()
    set_seed(preset.seed if seed is None else seed)
    print(f"python {platform.python_version()} | torch {torch.__version__} | transformers {transformers.__version__}"
          f" | matplotlib {matplotlib.__version__} | embiggen {__version__}")
    print(f"preset {preset.name!r} | device {pick_device()} | {threads} CPU threads | seed {preset.seed}"
          + (f" | base model {preset.base_model}" if preset.base_model else ""))
    if preset.base_model:
        print("The prose around these cells describes the committed run, which starts from the embedded model: "
              "numbers from your model will differ, and so may what they show.")
    return preset


def _one_line_error(shell, etype, value, tb, tb_offset=None):
    """IPython's handler for `UserError`: the message, no traceback (still an error for nbval)."""
    stb = [f"{etype.__name__}: {value}"]
    shell._showtraceback(etype, value, stb)
    return stb
