"""Run directories are owned: what ``train``/``study`` may write into, and one driver at a time.

* :func:`claim_run_dir` accepts an ``out`` that does not exist, is empty, or is already a widthkit run
  (it has a widthkit ``index.json``, a damaged one beside widthkit shards, or holds nothing but files
  widthkit writes before its index).  A file,
  a path under a file, or a folder with anything else is refused in one line naming what is there, so a
  user's folder is never taken over.
* :func:`run_lock` guards a run directory against two drivers at once with ``RUN/.widthkit.lock``
  (``host pid``), created exclusively.  A second driver gets one line naming the holder; a lock whose
  process is gone (same host) is stale and taken over.  Re-entrant within one process (``study`` holds
  it around ``train_ladder``, which takes it too).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from .atomic import pid_alive
from .errors import RunStoreError
from .store import DamagedIndexError, read_index

LOCK = ".widthkit.lock"
INDEX = "index.json"
# what widthkit writes into a run directory before (or besides) its index: a crash may leave only these
_OWN_EARLY = {LOCK, "recipe.toml", "shards", "ckpt"}


def _is_own_tmp(name: str) -> bool:
    """A temporary file of an atomic write (``.<target>.<random>.tmp``)."""
    return name.startswith(".") and name.endswith(".tmp")


def _foreign(out: Path) -> list[str]:
    """Entries of ``out`` that widthkit would not have written there before its index existed."""
    return sorted(p.name for p in out.iterdir() if p.name not in _OWN_EARLY and not _is_own_tmp(p.name))


def claim_run_dir(out: str | Path) -> Path:
    """Check that ``out`` may hold a run (see the module docstring); returns it as a Path.

    Raises :class:`RunStoreError` naming the problem: a file, a path under a file, or foreign content.
    """
    out = Path(out)
    try:
        return _claim(out)
    except RunStoreError:
        raise
    except OSError as e:  # a name too long for the file system, a permission, ...
        why = "a name in it is too long for the file system" if e.errno == errno.ENAMETOOLONG else e.strerror
        raise RunStoreError(f"`out` '{str(out)[:80]}' cannot be used ({why}); pass another folder") from None


def _claim(out: Path) -> Path:
    for parent in [out, *out.parents]:
        if parent.exists() and not parent.is_dir():
            where = "is a file" if parent == out else f"lies under the file '{parent}'"
            raise RunStoreError(f"`out` '{out}' {where}; pass a folder that is empty, new, or a widthkit run")
        if parent.exists():
            break
    if not out.exists():
        return out
    if (out / INDEX).is_file():
        try:
            read_index(out)
        except DamagedIndexError as e:  # a damaged index of a run (its shards are there) is rebuilt by a resume
            if not any((out / "shards").glob("p*-w*.h5")):
                raise RunStoreError(f"`out` '{out}' holds an index.json that is not a widthkit run's ({e}); "
                                    "pass a new or empty folder") from None
        return out
    foreign = _foreign(out)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise RunStoreError(f"`out` '{out}' is not empty and not a widthkit run (it holds {shown}); "
                            "widthkit never writes into a folder it did not create: pass a new or empty folder")
    return out


_held: dict[Path, int] = {}  # lock path -> nesting depth, for this process


@contextlib.contextmanager
def run_lock(out: str | Path) -> Iterator[None]:
    """Hold ``out``'s driver lock for the block (creating ``out``); see the module docstring."""
    path = (Path(out) / LOCK).absolute()
    if path in _held:
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if _stale(path, holder, me["host"]):
                path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            who = f"process {holder.get('pid')} on {holder.get('host')}" if holder else "another process"
            raise RunStoreError(f"run directory '{out}' is in use by {who} (lock file '{path}'); wait for it "
                                "to finish, or delete the lock file if that process is gone") from None
        except OSError as e:
            if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise RunStoreError(f"run directory '{out}' is read-only; training writes into it: pass a "
                                    "writable `out`") from None
            raise
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me))
        break
    _held[path] = 1
    try:
        yield
    finally:
        del _held[path]
        path.unlink(missing_ok=True)


def _stale(path: Path, holder: dict | None, host: str) -> bool:
    """A lock whose process (on this host) is gone, or an unreadable one older than a minute (a crash
    between creating and writing it)."""
    if holder is None:
        try:
            return time.time() - path.stat().st_mtime > 60
        except FileNotFoundError:
            return True
    pid = holder.get("pid")
    return holder.get("host") == host and isinstance(pid, int) and not pid_alive(pid)


def _holder(path: Path) -> dict | None:
    try:
        d = json.loads(path.read_text())
        return d if isinstance(d, dict) else None
    except (OSError, ValueError):
        return None
