"""Reading the files a user hands in: one clear error naming the file when it is damaged.

Checkpoints, dataset files, run records and exports are all read through :func:`reading`: whatever
the reader raises on a truncated, corrupt or foreign file (``SafetensorError``, ``OSError``,
``EOFError``, ``json.JSONDecodeError``, an unpickling error, ...) comes out as a :class:`FileError`,
a ``ValueError`` whose one-line message names the file and what is wrong with it.

    >>> from pwfn_viz.files import FileError, reading
    >>> try:
    ...     with reading("model.safetensors", "checkpoint"):
    ...         raise EOFError("Ran out of input")
    ... except FileError as err:
    ...     print(err)
    model.safetensors: this checkpoint is damaged or truncated (EOFError: Ran out of input)
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from pathlib import Path

__all__ = ["FileError", "reading", "read_bytes", "sha256_bytes"]


class FileError(ValueError):
    """A file that is missing, damaged, truncated or not what it should be. ``path`` is the file,
    ``problem`` what is wrong with it; the message is ``"<path>: <problem>"``, on one line."""

    def __init__(self, path, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}")


def _reason(err: BaseException) -> str:
    """``Type: first line of the message``, at most 200 characters."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


@contextmanager
def reading(path, what: str):
    """Run the body (which reads ``path``, a ``what`` such as "checkpoint"); any error it raises
    becomes a :class:`FileError` naming ``path``. A ValueError whose message already names the
    file passes through unchanged."""
    try:
        yield
    except FileError:
        raise
    except FileNotFoundError as err:
        raise FileError(path, f"this {what} is missing ({_reason(err)})") from None
    except IsADirectoryError:
        raise FileError(path, f"is a folder, not a {what} file") from None
    except PermissionError as err:
        raise FileError(path, f"this {what} cannot be opened ({_reason(err)})") from None
    except ValueError as err:
        if str(path) in str(err):
            raise
        raise FileError(path, f"this {what} is damaged or not in the expected format ({_reason(err)})") from None
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except Exception as err:
        raise FileError(path, f"this {what} is damaged or truncated ({_reason(err)})") from None


def read_bytes(path, what: str) -> bytes:
    """The content of ``path`` (a FileError naming it when it cannot be read)."""
    with reading(path, what):
        return Path(path).read_bytes()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
