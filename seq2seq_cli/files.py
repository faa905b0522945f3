"""Writing files safely: atomic replacement and an advisory lock on a folder.

Every file s2s writes that a crash could tear (checkpoints, configs, tokenizers, shards, the
corpus cache, plots) goes through ``atomic_write`` or ``save_atomically``: the new version is
written to a temporary sibling, flushed to disk and renamed over the old one, so a reader sees
the old version or the new one, never half of one.

``FolderLock`` keeps two processes from writing one run directory (or one prepared-corpus
folder) at once. It is an ``fcntl.flock`` on a file inside the folder: the kernel drops it when
its holder exits, however it exits, so a lock left by a killed process never blocks anyone.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from seq2seq_cli.errors import UserError


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once, as the package loads: reading it means setting it for a moment, which a thread
# creating a file at that moment would feel. mkstemp and mkdtemp make private (0600/0700)
# files; a file s2s writes gets the mode any program's would (0644 under umask 022), so that a
# server's account or a colleague can read a run.
_UMASK = _read_umask()


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Write a file through ``write(handle)`` so that a crash leaves the old file or the new one.

    A symbolic link is followed (the file it names is replaced, the link stays); a device or
    pipe (``/dev/null``, ``/dev/stdout``), which renaming would replace, is written in place."""
    if os.path.exists(path) and not os.path.isfile(path):
        with open(path, "wb") as out:
            write(out)
        return
    path = Path(os.path.realpath(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:  # named as the file asked for, not the temporary one
        raise OSError(err.errno, err.strerror, str(path)) from None
    try:
        # A replaced file keeps its mode; a new one gets what the umask allows.
        os.fchmod(handle, stat.S_IMODE(os.stat(path).st_mode) if path.exists() else 0o666 & ~_UMASK)
        with os.fdopen(handle, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename == tmp:
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda out: out.write(text.encode("utf-8")))


def atomic_torch_save(path: str | Path, payload: object) -> None:
    """``torch.save`` through ``atomic_write``; a failed write (a full disk) is raised as the
    OSError it is. torch.save's zip writer, closing the archive after the failed write, raises
    a RuntimeError of its own ("unexpected pos") with the OSError only as its context."""
    import torch  # here, not above: the CLI imports this module and must start without PyTorch

    try:
        atomic_write(path, lambda out: torch.save(payload, out))
    except RuntimeError as err:
        if isinstance(err.__context__, OSError):
            raise err.__context__ from None
        raise


def out_of_space(err: OSError) -> bool:
    """Whether a failed write failed for want of room (a full disk, a quota): freeing space helps."""
    return err.errno in (errno.ENOSPC, errno.EDQUOT)


def remedy(err: OSError) -> str:
    """What a message tells the user to do about a failed write: free space only where space ran out."""
    return "free space" if out_of_space(err) else "fix that"


def is_same_file(path: str | Path, other: str | Path | int) -> bool:
    """Whether ``path`` is an existing regular file and ``other`` (a path or an open file
    descriptor, such as stdin's) is that same file: writing ``path`` would destroy ``other``.

    Only regular files count: ``/dev/stdout`` and a terminal on stdin are one device, not
    one text."""
    try:
        info = os.stat(path)
        other_info = os.fstat(other) if isinstance(other, int) else os.stat(other)
    except (OSError, ValueError):
        return False
    return stat.S_ISREG(info.st_mode) and (info.st_dev, info.st_ino) == (other_info.st_dev, other_info.st_ino)


def save_atomically(folder: str | Path, save: Callable[[Path], object]) -> None:
    """Fill a folder through ``save(path)`` in a temporary sibling, then rename it into place."""
    folder = Path(folder)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        tmp.chmod(0o777 & ~_UMASK)
        save(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class FolderLock:
    """An exclusive advisory lock on ``folder`` for as long as this process holds it.

    ``acquire`` refuses at once, with one line naming the holder's process id and command,
    when another live process holds the lock."""

    FILE_NAME = ".s2s.lock"

    def __init__(self, folder: str | Path, purpose: str):
        self.folder = Path(folder)
        self.purpose = purpose  # e.g. "s2s train": what the holder is doing, for the other's error
        self._handle = None

    @property
    def path(self) -> Path:
        return self.folder / self.FILE_NAME

    def acquire(self) -> "FolderLock":
        try:
            handle = open(self.path, "a+b")
        except OSError as err:
            raise UserError(f"cannot lock {self.folder} ({err.strerror})") from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            handle.seek(0)
            holder = handle.read().decode("utf-8", errors="replace").strip() or "another process"
            handle.close()
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise UserError(f"{self.folder} is in use by {holder}; wait for it to finish or stop it "
                                "first") from None
            raise UserError(f"cannot lock {self.folder} ({err.strerror})") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} ({self.purpose})".encode("utf-8"))
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            # Truncating first keeps a stale holder's name out of the next refusal message.
            self._handle.truncate(0)
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
