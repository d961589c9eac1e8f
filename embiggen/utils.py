"""Small helpers every stage uses: seeds, devices, threads, the cache, atomic writes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch in one call (minGPT's habit)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(prefer: str | None = None) -> torch.device:
    """cuda, then Apple's mps, then cpu — or the device named by `prefer`/``EMBIGGEN_DEVICE``."""
    prefer = prefer or os.environ.get("EMBIGGEN_DEVICE")
    if prefer:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def set_threads(n: int | None = None) -> int:
    """Set torch's CPU thread count deliberately: ``EMBIGGEN_THREADS`` or the number of cores.

    On a small shared machine, the default (one thread per logical core plus inter-op
    threads) can fight over cores; fixing the count makes timings stable."""
    n = n or int(os.environ.get("EMBIGGEN_THREADS", "0")) or (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def cache_root() -> Path:
    """``$EMBIGGEN_CACHE`` or ``~/.cache/embiggen``."""
    return Path(os.environ.get("EMBIGGEN_CACHE") or Path.home() / ".cache" / "embiggen").expanduser()


def config_key(*parts) -> str:
    """A short stable hash of JSON-able configuration, for cache folder names."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


@contextlib.contextmanager
def atomic_dir(final: Path):
    """Yield a temporary folder beside `final`; rename it to `final` only if the block
    finishes. An interrupted run leaves no half-written checkpoint behind."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
