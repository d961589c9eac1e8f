"""What the benchmarks share: the laptop world's tokenizer, TRL if installed, and this process's memory."""

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


def reset_peak_rss() -> None:
    """Reset this process's peak resident memory (Linux: /proc/self/clear_refs, value 5)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def rss_mb(field: str = "VmHWM") -> int:
    """VmRSS (now) or VmHWM (the peak since `reset_peak_rss`) of this process, in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024)
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")
