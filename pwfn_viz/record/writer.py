"""One writer per run directory, and a directory checked before anything is trained into it.

A run (``pwfn_viz.run``, ``pwfn-viz run``, ``Fixer``) holds an exclusive lock on ``RUN_DIR/.lock``
(:mod:`filelock`, an OS lock the kernel drops when the process dies) for as long as it writes; the
file holds the writer's pid, host and start time while it is held and is emptied on release. A
second writer, or a ``--resume`` of a run that is still going, is refused with an error naming the
holder. A lock file still naming a process after the lock was free is the trace of a killed writer:
on the same host, where the process is gone, it is taken over and reported; a killed writer of
another host (whose process cannot be checked from here) is refused with the command that clears it.

A directory counts as fresh (a new run may start in it) when it holds no run.json and nothing but
this lock, temporary files and the start snapshot of a run killed before its first run.json.
"""
from __future__ import annotations

import datetime
import json
import os
import socket
import tempfile
from pathlib import Path

import filelock

LOCK_NAME = ".lock"
# What a run killed before its first run.json may leave: the start snapshot, temporaries, the lock.
_LEFTOVERS = ("start.safetensors", LOCK_NAME)

_HELD: dict[str, list] = {}   # lock path -> [FileLock, count, note]: a process may re-enter its own lock


class RunDirectoryLocked(FileExistsError):
    """Another process is writing the run directory (or a killed one's lock cannot be checked)."""


def _host() -> str:
    return socket.gethostname()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # exists, owned by someone else
        return True
    return True


def read_holder(out) -> dict | None:
    """The writer recorded in ``out``'s lock file ({"pid", "host", "since"}), None when none is."""
    try:
        text = (Path(out) / LOCK_NAME).read_text()
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return None
    try:
        holder = json.loads(text) if text.strip() else None
    except ValueError:
        return {"pid": None, "host": None, "since": None}   # being written this instant
    return holder if isinstance(holder, dict) else None


def describe(holder: dict | None) -> str:
    if not holder:
        return "pid unknown"
    return f"pid {holder.get('pid')} on host {holder.get('host')}, since {holder.get('since')}"


class RunLock:
    """The exclusive writer's lock of the run directory ``out`` (which must exist).

    ``acquire()`` raises :class:`RunDirectoryLocked` when another process holds it and returns a
    note when it took over the lock of a killed writer (else None); ``release()`` (or leaving the
    ``with`` block) gives it back. Re-entrant within a process (``run`` holds it around its Fixer).
    """

    def __init__(self, out):
        self.out = Path(out)
        self.path = self.out / LOCK_NAME
        self.held = False

    def acquire(self) -> str | None:
        if self.held:
            return None
        key = os.path.realpath(self.path)
        if key in _HELD:   # re-entered: the outer acquire's note, for whoever logs first
            _HELD[key][1] += 1
            self.held = True
            note, _HELD[key][2] = _HELD[key][2], None
            return note
        lock = filelock.FileLock(str(self.path))
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            raise RunDirectoryLocked(
                f"{self.out} is being written by another process ({describe(read_holder(self.out))}); "
                f"wait for it to end, or stop it and continue with `pwfn-viz run --resume {self.out}`") from None
        except PermissionError as err:
            raise PermissionError(f"cannot write the run directory {self.out}: {err.strerror or err}") from None
        note = None
        try:
            previous = read_holder(self.out)
            if previous and previous.get("pid") is not None and previous.get("pid") != os.getpid():
                if previous.get("host") != _host():
                    raise RunDirectoryLocked(
                        f"{self.out} holds the lock of a writer on another host ({describe(previous)}) that did not "
                        f"release it; its process cannot be checked from {_host()}. If it has ended, clear the "
                        f"lock with `rm {self.path}` and run again")
                state = "no longer running" if not _alive(int(previous["pid"])) else "no longer holding it"
                note = f"took over the stale lock of a killed writer ({describe(previous)}; {state})"
            with open(self.path, "r+") as f:
                f.truncate(0)
                f.write(json.dumps({"pid": os.getpid(), "host": _host(),
                                    "since": datetime.datetime.now().isoformat(timespec="seconds")}))
        except BaseException:
            lock.release()
            raise
        _HELD[key] = [lock, 1, note]
        self.held = True
        return note

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        key = os.path.realpath(self.path)
        entry = _HELD.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _HELD[key]
        try:
            with open(self.path, "r+") as f:   # a held lock names its holder; a free one names no one
                f.truncate(0)
        except OSError:
            pass
        entry[0].release()

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def is_fresh(out) -> bool:
    """True when a new run may start in ``out``: missing, empty, or holding only what a run killed
    before its first run.json leaves (the lock, temporary files, start.safetensors)."""
    out = Path(out)
    if not out.is_dir():
        return not out.exists()
    return all(p.name in _LEFTOVERS or (p.name.startswith(".") and p.name.endswith(".tmp")) for p in out.iterdir())


def clear_leftovers(out) -> None:
    """Remove what a run killed before its first run.json left in a fresh ``out`` (not the lock)."""
    out = Path(out)
    for p in out.iterdir():
        if p.name == "start.safetensors" or (p.name.startswith(".") and p.name.endswith(".tmp")):
            p.unlink(missing_ok=True)


def make_writable_dir(out) -> Path:
    """Create ``out`` (and its parents) and check that files can be written in it, before any
    training; clear errors for a file in the way and for a directory that cannot be written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except (FileExistsError, NotADirectoryError):   # a parent is a file
        raise FileExistsError(f"cannot create the run directory {out}: a parent of it is a file") from None
    except PermissionError as err:
        raise PermissionError(f"cannot write the run directory {out} ({err.strerror or err}); "
                              "choose a writable --out") from None
    return out
