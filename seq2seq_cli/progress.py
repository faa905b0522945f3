"""A training run and the person at the terminal: what they see (a progress bar, or plain log
lines) and what Ctrl-C does (save, then stop); and the bar of lines ``s2s translate`` shows."""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

if TYPE_CHECKING:
    from seq2seq_cli.train import Trainer

log = logging.getLogger(__name__)

def log_to_stderr() -> None:
    """s2s's log lines: the time and the message, on stderr (every command, and the processes
    that s2s serve starts, write them alike)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr, force=True)


@contextlib.contextmanager
def lines_progress(count_total: Callable[[], Optional[int]], interactive: bool) -> Iterator[Callable[[int], Any]]:
    """Lines translated (or scored), as a tqdm bar on stderr (with a total and an ETA when ``count_total``
    can say it rather than give None), for a person at a terminal waiting on a file or a pipe;
    yields the function that moves it on. Nothing shows when stderr is no terminal (a log, a
    script), or when the lines are typed or printed at the terminal (``interactive``), where a
    bar would tear them."""
    if interactive or not sys.stderr.isatty():
        yield lambda count: None
        return
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    total = count_total()  # counted only here, where a bar shows
    with tqdm(total=total, unit=" lines", dynamic_ncols=True, file=sys.stderr) as bar, logging_redirect_tqdm():
        yield bar.update


PLAIN_LOG_SECONDS = 30.0  # without a progress bar, a log line at least this often


class Progress:
    """What a person watching sees. On a terminal: a tqdm bar with a total and an ETA when
    max_steps or max_epochs is set, the running loss, and log lines printed above it. Else: a
    plain log line at each train record and at least every PLAIN_LOG_SECONDS. Also times the
    tokens/s of the train records."""

    def __init__(self, trainer: "Trainer"):
        self.trainer = trainer
        self.visible = trainer.world.is_main
        self.total = trainer.planned_steps()
        self.bar = None
        self._redirect = contextlib.nullcontext()
        self.started_at_step = trainer.state.step
        self.interval_start = self.last_line = self.started = time.perf_counter()
        self.interval_tokens = 0

    def __enter__(self) -> "Progress":
        if self.visible and sys.stderr.isatty():
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self.bar = tqdm(total=self.total, initial=self.trainer.state.step, unit="step", dynamic_ncols=True,
                            file=sys.stderr)
            self._redirect = logging_redirect_tqdm()
        self._redirect.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._redirect.__exit__(*exc)
        if self.bar is not None:
            self.bar.close()

    def step(self, tokens: int) -> None:
        self.interval_tokens += tokens
        state = self.trainer.state
        if self.bar is not None:
            self.bar.update(1)
            if state.interval_tokens:
                self.bar.set_postfix(loss=f"{state.interval_loss / state.interval_tokens:.3f}", refresh=False)
        elif self.visible and time.perf_counter() - self.last_line >= PLAIN_LOG_SECONDS:
            loss = state.interval_loss / state.interval_tokens if state.interval_tokens else math.nan
            self._line(f"loss {loss:.4f} (running)")

    def take_interval(self) -> tuple[int, float]:
        """Target tokens trained on since the last call, and the seconds that took."""
        now = time.perf_counter()
        interval = (self.interval_tokens, now - self.interval_start)
        self.interval_start, self.interval_tokens = now, 0
        return interval

    def show(self, record: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{record['train_loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}",
                                 lr=f"{record['lr']:.2e}", refresh=False)
        elif self.visible:
            self._line(f"loss {record['train_loss']:.4f}, lr {record['lr']:.2e}, {record['tokens_per_s']:.0f} tokens/s")

    def _line(self, text: str) -> None:
        state = self.trainer.state
        self.last_line = time.perf_counter()
        where = f"step {state.step}" + (f"/{self.total}" if self.total else "")
        eta = ""
        done = state.step - self.started_at_step
        if self.total and done:
            seconds = (self.total - state.step) * (self.last_line - self.started) / done
            eta = f", ETA {int(seconds // 60)}:{int(seconds % 60):02d}"
        log.info("%s epoch %d: %s%s", where, state.epoch + 1, text, eta)


class StopOnSignal:
    """While training, SIGINT and SIGTERM ask the loop to save and stop after the current step.

    A second signal of either kind stops at once, as it would without s2s."""

    def __init__(self, trainer: "Trainer"):
        self.trainer = trainer
        self.previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        self.trainer.signal_received = signum
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
