"""s2s: attention RNN machine translation from the command line, and from Python::

    from seq2seq_cli import Translator

    translator = Translator.load("runs/toy", device="cpu", beam_size=5)
    translator.translate(["The man sees the dog."])
"""

import os

# Intel MKL, PyTorch's CPU matrix library, is not reproducible run to run by default: it may
# use fewer threads than asked on a busy machine (MKL_DYNAMIC) and may choose its code path at
# run time (Conditional Numerical Reproducibility off). Either made a resumed run differ from the
# uninterrupted one in the last bits: 1 in 6 to 12 kill+resume cycles, even on an idle machine.
# MKL_CBWR=AUTO keeps the fastest code path for this CPU but fixes it; with a fixed thread
# count, the same run is bit-identical (benchmarks/README.md, "Determinism across processes").
# Both must be set before MKL starts, i.e. before PyTorch is first used.
os.environ.setdefault("MKL_DYNAMIC", "FALSE")
os.environ.setdefault("MKL_CBWR", "AUTO")
# oneDNN, which runs the LSTM and every bf16 matrix product on the CPU, builds a kernel for each
# new shape and keeps 1,024 by default. Length-bucketed batches and searches that drop finished
# sentences bring more shapes than that, so the cache kept evicting what came next: bf16
# decoding ran 1.03-1.24x fp32's speed with it and 1.34-1.38x with room for 16,384, and a second
# bf16 training epoch was 23% slower than with the larger cache, at the same memory
# (benchmarks/README.md). oneDNN reads this when it first builds a kernel.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16384")

__version__ = "0.1.0"
__all__ = ["Sampling", "Score", "Translation", "Translator", "__version__"]


def __getattr__(name: str):
    # Imported on first use, so that `s2s --help` does not wait for PyTorch.
    if name in ("Score", "Translation", "Translator"):
        from seq2seq_cli import translation

        return getattr(translation, name)
    if name == "Sampling":
        from seq2seq_cli.decoding import Sampling

        return Sampling
    raise AttributeError(f"module 'seq2seq_cli' has no attribute {name!r}")
