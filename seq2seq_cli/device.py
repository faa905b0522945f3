"""Where the model runs: device selection from config (``precision`` says in what number format),
the CPU math library set up so that the same computation gives the same bits in every process,
and how decoding spreads over the CPU's threads."""

from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Optional, Sequence, TypeVar

import torch

from seq2seq_cli.errors import UserError


def select_device(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device {name} requested but PyTorch sees no CUDA device; use cpu or auto")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device {name} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return device
    if name != "cpu":
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    return torch.device(name)


# PyTorch computes tanh, exp, log and other elementwise functions of float tensors on the CPU
# with Intel MKL's vector math, called from each thread of a parallel region. MKL sets a
# function up on its first call; when two threads make that first call at once, one of them
# can compute it along another code path, which differs in the last bits. A training
# process's first LSTM step is such a call: 2 processes in 100 computed their first parallel
# tanh differently from their second (benchmarks/README.md, "Determinism across processes"),
# which made about 1 training process in 30 differ from the others in every weight's last bits.
# One small call of each function, on this thread, before any parallel region, sets them up.
_VECTOR_MATH = ("tanh", "exp", "log", "log10", "log2", "log1p", "expm1", "sqrt", "rsqrt", "sin", "cos", "tan",
                "asin", "acos", "atan", "sinh", "cosh", "erf", "erfc", "erfinv", "lgamma", "sigmoid", "reciprocal")


def _set_up_vector_math() -> None:
    for dtype in (torch.float32, torch.float64):
        values = torch.linspace(0.1, 0.9, 16, dtype=dtype)  # 16 values: one thread does the call
        for name in _VECTOR_MATH:
            getattr(torch, name)(values)
        values.bernoulli_(0.5, generator=torch.Generator())  # dropout's MKL generator; not the global RNG


_set_up_vector_math()


# Decoding on the CPU runs one batch per thread, each batch's operations on that one thread,
# rather than each operation split across all threads. Two reasons (benchmarks/README.md,
# "Decoding on one thread per batch"): a decoder step is many small products that split
# badly (2 threads decoding 2 batches are 10-20% faster than 2 threads sharing each step),
# and MKL's matrix products round differently when split across another number of threads,
# so a translation's scores (and, at a near tie, its words) would depend on the machine's
# core count. Computed on one thread, they do not: `s2s translate`, `s2s evaluate` and every
# `s2s serve` decoder process give the same numbers with 1, 2 or 16 threads.
@contextmanager
def decoding_threads(device: torch.device) -> Iterator[int]:
    """How many batches to decode at once on ``device`` (torch's thread count on the CPU, else 1);
    inside, torch computes on one thread until the previous count is restored."""
    if device.type != "cpu":
        yield 1
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)


Item = TypeVar("Item")
Result = TypeVar("Result")


def cut_into_batches(order: Sequence[int], batch_size: int) -> list[list[int]]:
    """``order`` in pieces of ``batch_size``, the last one shorter."""
    return [list(order[start: start + batch_size]) for start in range(0, len(order), batch_size)]


def fill_in_batches(results: list, batches: Sequence[list[int]], function: Callable[[list[int]], list],
                    device: torch.device, progress: Optional[Callable[[int], object]] = None) -> None:
    """Set ``results[i]`` for each index i of ``batches`` (lists of indices into ``results``)
    from ``function(batch)``, which gives one result per index of its batch. On the CPU as many
    batches are computed at once as torch has threads, each on one thread
    (``decoding_threads``); ``progress`` is told the size of each batch done, in order."""
    with decoding_threads(device) as threads:
        for batch, found in zip(batches, map_in_order(function, batches, min(threads, len(batches)))):
            for index, result in zip(batch, found):
                results[index] = result
            if progress is not None:
                progress(len(batch))


def _on_one_thread(function: Callable[[Item], Result], item: Item) -> Result:
    # torch's thread count is each thread's own (OpenMP and MKL keep it per thread), and a new
    # thread takes the process-wide count when it first computes: set it here, every time.
    torch.set_num_threads(1)
    return function(item)


def map_in_order(function: Callable[[Item], Result], items: Iterable[Item], workers: int) -> Iterator[Result]:
    """``map(function, items)`` with ``workers`` threads computing on one torch thread each,
    results in input order. ``items`` is read by a thread of its own, no further ahead than the
    workers can take, so a stream stays a stream: a line typed at a terminal is translated and
    printed before the next one is read."""
    if workers <= 1:
        yield from map(function, items)
        return
    submitted: queue.Queue = queue.Queue(maxsize=workers)  # futures, then None at the end
    stop = threading.Event()
    failure: list[BaseException] = []

    def put(entry) -> bool:  # False once the consumer has gone
        while not stop.is_set():
            try:
                submitted.put(entry, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def feed(pool: ThreadPoolExecutor) -> None:
        try:
            for item in items:
                if not put(pool.submit(_on_one_thread, function, item)):
                    return
        except BaseException as error:  # reading the input failed: the consumer raises it
            failure.append(error)
        put(None)

    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        feeder = threading.Thread(target=feed, args=(pool,), name="decode-input", daemon=True)
        feeder.start()
        try:
            while (future := submitted.get()) is not None:
                yield future.result()
            if failure:
                raise failure[0]
        finally:
            stop.set()
            while True:  # unblock the feeder and drop what it queued
                try:
                    pending = submitted.get_nowait()
                except queue.Empty:
                    break
                if pending is not None:
                    pending.cancel()
