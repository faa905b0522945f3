"""The run directory: every path in it, what ``--overwrite`` may remove, and who may write it.

Layout::

    RUN/config.yaml                  the fully resolved config (absolute paths)
    RUN/tokenizer/                   the tokenizer(s), save_pretrained form
    RUN/checkpoints/best.pt          best dev BLEU so far (weights, config, sizes)
    RUN/checkpoints/last.pt          latest state (plus optimizer, schedule, RNG states)
    RUN/checkpoints/step-N.pt        the last ``training.keep_last`` states, for averaging
    RUN/checkpoints/averaged.pt      written by ``s2s average``
    RUN/metrics.jsonl                one JSON object per event: start, train, valid, end
    RUN/curves.png                   train/dev loss, dev perplexity and dev BLEU against step
    RUN/tensorboard/                 the same scalars for TensorBoard (training.tensorboard: true)
    RUN/.s2s.lock                    held by the process that trains in RUN

Nothing else in the package spells these names; everything asks a ``RunDir``.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from seq2seq_cli.errors import UserError
from seq2seq_cli.files import FolderLock


class RunDir:
    """The paths of one run directory and the rules for creating, replacing and locking it."""

    # What s2s writes into a run directory; --overwrite removes these and nothing else.
    ENTRIES = ("config.yaml", "tokenizer", "checkpoints", "metrics.jsonl", "curves.png", "tensorboard")

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._lock = FolderLock(self.root, "s2s train")
        self._created_root = False  # this process made the folder
        self._started_fresh = False  # this process emptied it for a new run
        self._created_lock_file = False

    def __str__(self) -> str:
        return str(self.root)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def averaged(self) -> Path:
        return self.checkpoints / "averaged.pt"

    STEP_CHECKPOINTS = "step-*.pt"  # what step_checkpoint names

    def step_checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:08d}.pt"

    def step_checkpoints(self) -> list[Path]:
        """The kept ``step-N.pt`` files, oldest first."""
        return sorted(self.checkpoints.glob(self.STEP_CHECKPOINTS))

    def holds_run(self) -> bool:
        """Whether a run was started here: its ``config.yaml`` or a checkpoint exists."""
        return self.config.is_file() or any(self.checkpoints.glob("*.pt"))

    @staticmethod
    def is_training_checkpoint(path: str | Path) -> bool:
        """Whether ``path`` is where some run's training keeps ``best.pt``, ``last.pt`` or a
        ``step-N.pt`` (a folder named ``checkpoints``), which nothing else may replace."""
        path = Path(path).resolve()
        run = RunDir(path.parent.parent)
        return path.parent == run.checkpoints and (path in (run.best, run.last)
                                                   or fnmatch.fnmatch(path.name, RunDir.STEP_CHECKPOINTS))

    def keep_step_checkpoints(self, step: int, kept_steps: list[int]) -> None:
        """Keep ``last.pt`` as ``step-N.pt`` too (a hard link: no extra disk) and remove every
        step checkpoint not in ``kept_steps`` (e.g. from a killed run's future)."""
        snapshot = self.step_checkpoint(step)
        snapshot.unlink(missing_ok=True)
        try:
            os.link(self.last, snapshot)
        except OSError:
            shutil.copyfile(self.last, snapshot)
        wanted = {self.step_checkpoint(kept) for kept in kept_steps}
        for stale in self.step_checkpoints():
            if stale not in wanted:
                stale.unlink(missing_ok=True)

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def curves(self) -> Path:
        return self.root / "curves.png"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    # -- writing ---------------------------------------------------------------------------

    def lock(self) -> None:
        """Hold the directory for this process: a second trainer (or an --overwrite) is refused
        with one line naming this process, until it exits."""
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"run directory {self.root} is a file; choose another --run-dir")
        self._created_root = not self.root.exists()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create run directory {self.root} ({err.strerror})") from None
        self._created_lock_file = not self._lock.path.exists()
        self._lock.acquire()

    def unlock(self) -> None:
        self._lock.release()

    def refuse_existing(self, overwrite: bool) -> list[str]:
        """What of an earlier run is here (``ENTRIES``); an error if anything is, unless told to replace it."""
        existing = [name for name in self.ENTRIES if (self.root / name).exists()]
        if existing and not overwrite:
            raise UserError(f"run directory {self.root} already holds a run ({', '.join(existing)}); "
                            "pass --overwrite to replace it or --run-dir to choose another")
        return existing

    def start_fresh(self, overwrite: bool, reads: Optional[dict[str, Optional[str | Path]]] = None) -> None:
        """Make the (locked) directory ready for a new run: refuse one that holds a run unless
        told to replace it, and never touch files s2s did not write. ``reads`` names what the
        new run will read (setting: path), which replacing the old run must not remove: a run
        fine-tuned from the run it replaces would delete its own parent."""
        existing = self.refuse_existing(overwrite)
        for setting, path in (reads or {}).items():
            if path is None:
                continue
            read = Path(path).resolve()
            for name in existing:
                # The one inside the other: a parent's checkpoint in ours, or our tokenizer/ in a shards folder.
                entry = (self.root / name).resolve()
                if read.is_relative_to(entry) or entry.is_relative_to(read):
                    raise UserError(f"--overwrite would remove {self.root / name}, which {setting} ({path}) needs; "
                                    "write the new run to another run directory")
        for name in existing:
            target = self.root / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        try:  # a real write: permission bits say little to root or on a read-only mount
            self.checkpoints.mkdir(exist_ok=True)
            with tempfile.TemporaryFile(dir=self.root):
                pass
        except OSError as err:
            raise UserError(f"run directory {self.root} is not writable ({err.strerror})") from None
        self._started_fresh = True

    def remove_failed_start(self) -> None:
        """Undo a start that failed before its first checkpoint: remove what it wrote (and the
        directory itself when this start created it and nothing else is in it)."""
        for name in self.ENTRIES if self._started_fresh else ():
            target = self.root / name
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            elif target.exists():
                target.unlink(missing_ok=True)
        self.unlock()
        if self._created_lock_file:
            self._lock.path.unlink(missing_ok=True)
        if self._created_root:
            try:
                self.root.rmdir()
            except OSError:
                pass  # something else is in it now: leave it

    # -- reading ---------------------------------------------------------------------------

    @classmethod
    def resolve_checkpoint(cls, path: str | Path) -> tuple[Path, "RunDir"]:
        """A checkpoint file, or a run directory (meaning its best checkpoint, else its last);
        returns the file and the run directory it belongs to."""
        path = Path(path)
        if path.is_dir():
            run = cls(path)
            for candidate in (run.best, run.last):
                if candidate.is_file():
                    return candidate, run
            raise UserError(f"{path}: no checkpoints/best.pt or checkpoints/last.pt; is this a run directory?")
        if path.is_file():
            return path, cls(path.parent.parent if path.parent.name == "checkpoints" else path.parent)
        raise UserError(f"{path}: no such checkpoint file or run directory")
