"""What the TRL comparisons share: the laptop world's tokenizer and TRL, if installed."""

from __future__ import annotations

from embiggen.data.splits import build_corpus, build_world
from embiggen.lm.tokenizer import train_tokenizer
from embiggen.presets import get_preset


def laptop_tokenizer():
    """The laptop preset and a tokenizer trained on 5,000 of its corpus documents."""
    preset = get_preset("laptop")
    docs, _ = build_corpus(preset, build_world(preset))
    return preset, train_tokenizer(docs[:5000], preset.vocab_size)


def import_trl(trainer: str):
    """The `trl` module, or None with a hint on how to install it (it is never a runtime dependency)."""
    try:
        import trl
    except ImportError:
        print(f"trl not installed: pip install -e '.[bench]' to compare with TRL's {trainer}")
        return None
    return trl
