"""Small helpers every stage uses: seeds, devices, threads, the cache, atomic writes."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from embiggen.errors import UserError


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch in one call (minGPT's habit)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


MANIFEST = "manifest.json"


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def seal(folder: Path) -> None:
    """Record the size and SHA-256 of every file of `folder` in its manifest.json, make the
    files and the folder readable by others, and fsync them all: what a cache entry is
    checked against when it is read (`verify_entry`), and on disk before it is renamed."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": file_digest(p)} for p in files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    for p in [*files, folder / MANIFEST]:
        p.chmod(0o644)
        _fsync(p)
    folder.chmod(0o755)
    _fsync(folder)


def verify_entry(folder: Path) -> str | None:
    """Why the sealed folder does not hold what was written (None if it does). A folder written
    before entries were sealed has no manifest, and is taken as it is."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return f"its {MANIFEST} cannot be read ({type(exc).__name__})"
    if not isinstance(manifest, dict):
        return f"its {MANIFEST} is not a manifest"
    for name, expected in manifest.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected.get("size"):
            return f"{name} has {path.stat().st_size:,} bytes, not the {expected.get('size'):,} written"
        if file_digest(path) != expected.get("sha256"):
            return f"{name} has changed since it was written (its SHA-256 differs)"
    return None


def quarantine(folder: Path, why: str) -> Path:
    """Move a broken cache entry (or resume point) aside, say so in one line, and return where
    it went: the caller rebuilds it."""
    folder = Path(folder)
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{os.urandom(3).hex()}"
    aside = folder.parent / f".{folder.name.lstrip('.')}.broken-{stamp}"
    os.replace(folder, aside)
    print(f"warning: {folder}: {why}; moved it to {aside} and rebuilding it", file=sys.stderr)
    return aside


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_orphans(parent: Path) -> list[Path]:
    """Remove the temporary folders and files (`.<name>.tmp-<pid>-...`) that processes which
    no longer run left behind in `parent`; those of running processes stay. Returns what went."""
    removed = []
    for path in Path(parent).glob(".*.tmp-*"):
        pid = path.name.rsplit(".tmp-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def entry_lock(path: Path):
    """Hold `.<name>.lock` beside the cache entry `path` while it is built, so that several
    processes on one cache build each entry once: the others wait, then load it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another embiggen process building {path.name} ...", file=sys.stderr)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def atomic_dir(final: Path):
    """Yield a temporary folder beside `final`; when the block finishes, seal it (`seal`:
    manifest, permissions, fsync) and rename it to `final`, replacing what was there. An
    interrupted run leaves no half-written entry behind, and no file a power loss could leave
    empty. (Two processes never build one entry at once: `entry_lock`.)"""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    try:
        yield tmp
        seal(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(final.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
