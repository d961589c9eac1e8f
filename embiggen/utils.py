"""Small helpers every stage uses: seeds, devices, threads, the cache, atomic writes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch in one call (minGPT's habit)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class UserError(ValueError):
    """A problem the user can fix, with a message of one line that names what to fix (a
    variable, a flag, a file or a folder). The command line prints it without a traceback and
    exits with 2; `embiggen.notebook.setup` makes notebooks show it as one line too."""


def device_problem(name: str) -> str | None:
    """Why the device `name` cannot be used here (None if it can)."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        return f"{name!r} is not a device torch knows; use cpu, cuda, cuda:N or mps"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return f"{name!r} asked for, but this torch sees no CUDA GPU (torch {torch.__version__}); use cpu"
        if device.index is not None and device.index >= torch.cuda.device_count():
            return f"{name!r} asked for, but there are only {torch.cuda.device_count()} CUDA devices"
    elif device.type == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            return f"{name!r} asked for, but Apple's MPS is not available here; use cpu"
    elif device.type != "cpu":
        return f"{name!r} is not supported; use cpu, cuda, cuda:N or mps"
    return None


def pick_device(prefer: str | None = None) -> torch.device:
    """cuda, then Apple's mps, then cpu — or the device named by `prefer`/``EMBIGGEN_DEVICE``
    (checked: a device that is not there is a `UserError` naming the variable)."""
    named = prefer or os.environ.get("EMBIGGEN_DEVICE")
    if named:
        problem = device_problem(named)
        if problem:
            raise UserError(f"EMBIGGEN_DEVICE: {problem}" if not prefer else f"device: {problem}")
        return torch.device(named)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def set_threads(n: int | None = None) -> int:
    """Set torch's CPU thread count deliberately: ``EMBIGGEN_THREADS`` or the number of cores.

    On a small shared machine, the default (one thread per logical core plus inter-op
    threads) can fight over cores; fixing the count makes timings stable."""
    n = n or thread_setting() or (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def thread_setting() -> int | None:
    """``EMBIGGEN_THREADS`` checked: a positive whole number (a `UserError` naming the variable
    otherwise), with a warning above the number of cores, where threads fight over them."""
    raw = os.environ.get("EMBIGGEN_THREADS", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise UserError(f"EMBIGGEN_THREADS must be a positive whole number of CPU threads, not {raw!r}")
    n, cores = int(raw), os.cpu_count() or 1
    if n > cores:
        warnings.warn(f"EMBIGGEN_THREADS={n} is more than the {cores} CPU cores here: torch's threads will fight over "
                      f"them and training can run many times slower; use {cores} or fewer", stacklevel=2)
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
