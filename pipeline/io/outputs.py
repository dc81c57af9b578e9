"""Stage outputs are written whole or not at all.

A stage writes into a temporary sibling directory and swaps it into place, so a crash never leaves
a half-written output that a later stage (or DVC) would take for a complete one, and a rerun simply
replaces the previous output.

- **Atomic swap.** On Linux the new directory and the old one trade places in one
  ``renameat2(RENAME_EXCHANGE)``: at every instant the target holds the old or the new output, never
  neither. Where that call is missing (another OS, a filesystem without it) the swap falls back to
  two renames (old out of the way, new in).
- **One writer per target.** Writers of the same target (Airflow may run four score runs of one
  day at once) are serialised by an ``flock`` on ``.<name>.lock`` beside the target, so they never
  trip over each other's renames; each one's replace succeeds in turn.
- **Crash leftovers are repaired.** A writer killed mid-way leaves hidden ``.<name>.tmp-*`` /
  ``.<name>.old-*`` siblings. The next replace of that target (under the lock) first restores a
  target lost between the two fallback renames from its ``.old-*`` copy, then deletes the leftovers.

File names made from data (KPI ids, detector names) go through :func:`safe_stem`.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import output_error

try:
    import fcntl
except ImportError:  # not POSIX: writers are not serialised (kpiguard deploys on Linux)
    fcntl = None  # type: ignore[assignment]


_UMASK = os.umask(0)
os.umask(_UMASK)

# A readable slug plus a hash: file names stay far below NAME_MAX (255 bytes) whatever the id, and ids
# that slug alike ("a/b", "a_b", "a b") still get different names.
SLUG_CHARS = 48
HASH_CHARS = 12


def safe_stem(text: str) -> str:
    """A bounded, collision-free file-name stem for any string: ``<slug>-<sha256[:12]>``."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("._-")[:SLUG_CHARS] or "x"
    return f"{slug}-{hashlib.sha256(str(text).encode('utf-8', 'surrogatepass')).hexdigest()[:HASH_CHARS]}"


# -- locking -----------------------------------------------------------------------------------
def lock_path(target: str | Path) -> Path:
    target = Path(target)
    return target.parent / f".{target.name}.lock"


@contextlib.contextmanager
def target_lock(target: str | Path) -> Iterator[None]:
    """Exclusive lock for writers of ``target``; the lock file is removed when the last holder leaves.

    The file is unlinked while still locked, so a waiter that opened the old inode re-checks that the
    path still names the inode it locked and otherwise starts over (the classic flock/unlink race).
    """
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


@contextlib.contextmanager
def _locks(targets: Sequence[Path]) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for t in sorted(set(targets), key=str):  # one global order: no deadlock between multi-target writers
            stack.enter_context(target_lock(t))
        yield


# -- the swap ----------------------------------------------------------------------------------
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _renameat2()


def exchange(a: str | Path, b: str | Path) -> bool:
    """Atomically swap two existing paths; False when this OS or filesystem cannot."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _leftovers(target: Path, kinds: str = "tmp|old") -> list[Path]:
    """Hidden siblings a (crashed) writer of ``target`` leaves: ``.<name>.tmp-*`` / ``.<name>.old-*``."""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(?:{kinds})-[A-Za-z0-9_-]+$")
    try:
        return [p for p in target.parent.iterdir() if pattern.match(p.name)]
    except FileNotFoundError:
        return []


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def recover(target: str | Path) -> None:
    """Repair what a killed writer of ``target`` left; call it holding :func:`target_lock`.

    A target lost between the two fallback renames is restored from its newest ``.old-*`` copy;
    every other ``.tmp-*`` / ``.old-*`` sibling is stale and deleted.
    """
    target = Path(target)
    olds = sorted(_leftovers(target, "old"), key=lambda p: p.stat().st_mtime)
    if olds and not target.exists():
        os.replace(olds.pop(), target)
    for path in [*olds, *_leftovers(target, "tmp")]:
        _remove(path)


def _swap_in(tmp: Path, target: Path) -> None:
    """Put ``tmp`` at ``target``; the previous ``target`` (if any) is deleted afterwards."""
    if target.exists() or target.is_symlink():
        if exchange(tmp, target):
            _remove(tmp)  # tmp now holds the old output
            return
        old = target.parent / f".{target.name}.old-{os.getpid()}-{os.urandom(4).hex()}"
        os.replace(target, old)
        os.replace(tmp, target)
        _remove(old)
    else:
        os.replace(tmp, target)


def _mkdtemp(target: Path) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp creates 0700
    return tmp


def replace_dirs_atomic(writers: Sequence[tuple[str | Path, Callable[[Path], None]]]) -> list[Path]:
    """Write every target's new content first, then swap them in: a failure in any ``write`` leaves
    every previous output untouched. ``writers``: ``(target, write(tmp_dir))`` pairs. An ``OSError``
    (a full disk, no permission) becomes an :class:`~pipeline.errors.OutputError` naming the target."""
    pairs = [(Path(t), w) for t, w in writers]
    current = pairs[0][0] if pairs else None
    try:
        for current, _ in pairs:
            current.parent.mkdir(parents=True, exist_ok=True)
        with _locks([t for t, _ in pairs]):
            for current, _ in pairs:
                recover(current)
            staged: list[tuple[Path, Path]] = []
            try:
                for current, write in pairs:
                    tmp = _mkdtemp(current)
                    staged.append((tmp, current))
                    write(tmp)
            except BaseException:
                for tmp, _ in staged:
                    _remove(tmp)
                raise
            for tmp, current in staged:
                _swap_in(tmp, current)
    except OSError as exc:
        raise output_error(current, exc) from exc
    return [t for t, _ in pairs]


def replace_dir_atomic(target: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_dir)``, then swap ``tmp_dir`` in as ``target`` (see the module docstring)."""
    return replace_dirs_atomic([(target, write)])[0]


# -- single files ------------------------------------------------------------------------------
def write_file_atomic(path: str | Path, data: bytes) -> Path:
    """A file that readers see old or new, never partial: temp file, fsync, ``os.replace``.

    Serialised per file like directories, and a rerun deletes the temp file a killed writer left.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with target_lock(path):
            for stale in _leftovers(path, "tmp"):
                _remove(stale)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
            try:
                os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; outputs are ordinary files
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
    except OSError as exc:
        raise output_error(path, exc) from exc
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_file_atomic(path, text.encode())


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    return write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
