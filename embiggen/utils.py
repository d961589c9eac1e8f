"""Small helpers every stage uses: seeds, devices, threads, the cache, atomic writes."""

from __future__ import annotations

import contextlib
import errno
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
from safetensors import SafetensorError

from embiggen.errors import UserError, is_disk_full, printable


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


#: EMBIGGEN_THREADS may be at most this many times the number of cores: far above it, torch's
#: thread pools exhaust the machine's threads (a crash, not a slow run)
MAX_THREADS_PER_CORE = 4


def thread_setting() -> int | None:
    """``EMBIGGEN_THREADS`` checked: a positive whole number, at most `MAX_THREADS_PER_CORE` times
    the number of cores (a `UserError` naming the variable otherwise), with a warning above the
    number of cores, where threads fight over them."""
    raw = os.environ.get("EMBIGGEN_THREADS", "").strip()
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise UserError(f"EMBIGGEN_THREADS must be a positive whole number of CPU threads, not {printable(raw)!r}")
    cores = os.cpu_count() or 1
    if len(raw) > 6 or int(raw) > MAX_THREADS_PER_CORE * cores:
        raise UserError(f"EMBIGGEN_THREADS={raw[:20]}{'...' if len(raw) > 20 else ''} is far more than the {cores} "
                        f"CPU cores here (at most {MAX_THREADS_PER_CORE * cores}); use {cores} or fewer")
    n = int(raw)
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

#: the cache's format, recorded in `$EMBIGGEN_CACHE/cache-format.json` when the cache is first
#: written to. 2: every entry is sealed (`seal`) with a manifest.json; an entry without one
#: that was written after the cache was marked is damaged, and is rebuilt.
CACHE_FORMAT = 2
FORMAT_FILE = "cache-format.json"


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


def _manifest_problem(manifest) -> str | None:
    """Why `manifest` (parsed JSON) is not what `seal` writes: file name -> {"size": int,
    "sha256": 64 hex digits}, each name a relative path inside the folder."""
    if not isinstance(manifest, dict) or not manifest:
        return f"its {MANIFEST} is not a manifest"
    for name, expected in manifest.items():
        parts = Path(name).parts
        if Path(name).is_absolute() or not parts or ".." in parts:
            return f"its {MANIFEST} names a file outside the entry ({printable(name)[:80]!r})"
        if not (isinstance(expected, dict) and type(expected.get("size")) is int and expected["size"] >= 0
                and isinstance(expected.get("sha256"), str) and len(expected["sha256"]) == 64):
            return f"its {MANIFEST} is not a manifest (the entry of {printable(name)[:80]!r} is not a size and a SHA-256)"
    return None


def cache_format_since(root: Path) -> float | None:
    """When the cache at `root` was marked with its format (`mark_cache`): the mark's modification
    time, on the same clock as the entries' own; None if it was not marked (a cache older than
    the mark, or a folder that is no cache). A mark from a newer Embiggen is a `UserError`; one
    that cannot be read still counts as a mark."""
    mark_file = Path(root) / FORMAT_FILE
    try:
        since = mark_file.stat().st_mtime
        mark = json.loads(mark_file.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return 0.0
    if isinstance(mark, dict) and type(mark.get("format")) is int and mark["format"] > CACHE_FORMAT:
        raise UserError(f"EMBIGGEN_CACHE={root} was written by a newer Embiggen (cache format {mark['format']}; this "
                        f"one reads format {CACHE_FORMAT}): upgrade Embiggen, or point EMBIGGEN_CACHE at another folder")
    return since


def mark_cache(root: Path) -> None:
    """Record the cache's format in `root` (once; see `CACHE_FORMAT`)."""
    root = Path(root)
    if not (root / FORMAT_FILE).exists():
        atomic_write_text(root / FORMAT_FILE, json.dumps({"format": CACHE_FORMAT}) + "\n")


def verify_entry(folder: Path, since: float | None = None) -> str | None:
    """Why the sealed folder does not hold what was written (None if it does): its manifest.json
    must be one `seal` writes, and every file it names must have the size and SHA-256 recorded.

    A folder without a manifest is taken as it is if it was written before its cache was marked
    with the cache's format at time `since` (`cache_format_since`; None: the cache is unmarked),
    which is what entries older than sealing look like; written after it, it is damaged."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        if since is not None and folder.stat().st_mtime >= since:
            return (f"it has no {MANIFEST}, which every entry written since "
                    f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(since))} carries")
        return None
    except (OSError, ValueError) as exc:
        return f"its {MANIFEST} cannot be read ({type(exc).__name__})"
    problem = _manifest_problem(manifest)
    if problem:
        return problem
    for name, expected in manifest.items():
        path = folder / name
        if not path.is_file():
            return f"{printable(name)} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{printable(name)} has {path.stat().st_size:,} bytes, not the {expected['size']:,} written"
        if file_digest(path) != expected["sha256"]:
            return f"{printable(name)} has changed since it was written (its SHA-256 differs)"
    return None


#: errno values that say something about the machine, not about the file being read: an entry
#: that fails to load with one of these is intact, and stays in the cache
_MACHINE_ERRNOS = {errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOSPC, errno.EDQUOT, errno.EROFS,
                   errno.EACCES, errno.EPERM, errno.EIO, errno.EINTR, errno.EBUSY}


def entry_at_fault(exc: BaseException) -> bool:
    """Did loading a cache entry raise `exc` because of what the entry holds (a file missing, a
    safetensors or JSON format error), rather than because of the machine (out of memory or
    threads, a full disk, a permission)? Only the first moves an entry aside: retraining a
    good entry because memory ran out loses hours on a real model."""
    if isinstance(exc, (MemoryError, RecursionError)) or "out of memory" in str(exc).lower():
        return False
    if isinstance(exc, OSError) and exc.errno in _MACHINE_ERRNOS:
        return False
    if isinstance(exc, SafetensorError):  # it wraps I/O errors too: "... (os error 12)"
        code = str(exc).rsplit("os error ", 1)[-1].rstrip(")\" }").split()[0] if "os error " in str(exc) else ""
        return not (code.isdigit() and int(code) in _MACHINE_ERRNOS)
    if isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError, FileNotFoundError, NotADirectoryError,
                        IsADirectoryError)):
        return True
    # transformers says a file is missing or unreadable with a bare OSError (no errno)
    return type(exc) is OSError and exc.errno is None


class EntryLoadError(RuntimeError):
    """A cache entry whose files are intact could not be loaded, for a reason outside it (memory,
    threads, ...): it stays in the cache, and the message says so."""

    def __init__(self, path: Path, exc: BaseException):
        what = f"{type(exc).__name__}: {printable(str(exc)).splitlines()[0][:200]}" if str(exc) else type(exc).__name__
        if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
            hint = "the machine ran out of memory: free some (or use a smaller preset) and run again"
        elif "thread" in str(exc).lower():
            hint = "the machine ran out of threads: lower EMBIGGEN_THREADS or raise the process limits, and run again"
        else:
            hint = "fix what the error names and run again"
        super().__init__(f"{path} could not be loaded ({what}); its files are intact, so it stays in the cache: {hint}")
        self.path = path


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


class DiskFull(UserError):
    """A write failed because the disk is full: which folder, and that the run resumes."""

    def __init__(self, folder: Path):
        super().__init__(f"the disk holding {folder} is full (no space left on device): free some space and run the "
                         "same command again; it resumes where it stopped, and nothing written so far is lost")


class CacheReadOnly(UserError):
    """The cache cannot be written, and this needs to write it."""


def read_only(exc: OSError) -> bool:
    """Is `exc` the refusal of a folder that cannot be written (a read-only mount, permissions)?"""
    return isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM)


@contextlib.contextmanager
def entry_lock(path: Path):
    """Hold `.<name>.lock` beside the cache entry `path` while it is built, so that several
    processes on one cache build each entry once: the others wait, then load it.

    Yields True with the lock held; False where the cache cannot be written (a read-only mount,
    a folder of someone else's), so no lock can be made: a complete entry can still be read
    (nobody can be replacing it there), and the caller refuses anything that must write."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.parent / f".{path.name}.lock", "a")
    except OSError as exc:
        if not read_only(exc):
            raise
        yield False
        return
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another embiggen process building {path.name} ...", file=sys.stderr)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def is_main_process() -> bool:
    """Whether this process writes: the only one, or rank 0 of several (torchrun's RANK)."""
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def atomic_dir(final: Path):
    """Yield a temporary folder beside `final`; when the block finishes, seal it (`seal`:
    manifest, permissions, fsync) and rename it to `final`, replacing what was there. An
    interrupted run leaves no half-written entry behind, and no file a power loss could leave
    empty. (Two processes never build one entry at once: `entry_lock`.) On a rank other than 0
    of a data-parallel run the folder is only scratch, removed after the block: rank 0 writes."""
    final = Path(final)
    if not is_main_process():
        scratch = Path(tempfile.mkdtemp(prefix=f".{final.name}.rank{os.environ.get('RANK')}-"))
        try:
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFull(final.parent) from exc
        raise
    try:
        yield tmp
        seal(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(final.parent)
    except Exception as exc:  # noqa: BLE001 - a full disk is said as such; anything else goes on as it is
        if is_disk_full(exc):
            raise DiskFull(final.parent) from exc
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    """`text` into `path` by way of a temporary file renamed into place (rank 0 only, of several)."""
    if not is_main_process():
        return
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFull(path.parent) from exc
        raise
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if is_disk_full(exc):
            raise DiskFull(path.parent) from exc
        raise
