"""s2s: attention RNN machine translation from the command line, and from Python::

    from seq2seq_cli import Translator

    translator = Translator.load("runs/toy", device="cpu", beam_size=5)
    translator.translate(["The man sees the dog."])
"""

import os

# Intel MKL may use fewer threads than asked when the machine is busy (MKL_DYNAMIC, on by
# default), and a matmul split over fewer threads sums in another order: a run resumed on an
# oversubscribed machine then differed from the uninterrupted one in the last bits. A fixed
# thread count keeps runs bit-identical however busy the machine is (set before MKL starts).
os.environ.setdefault("MKL_DYNAMIC", "FALSE")

__version__ = "0.1.0"
__all__ = ["Translation", "Translator", "__version__"]


def __getattr__(name: str):
    # Imported on first use, so that `s2s --help` does not wait for PyTorch.
    if name in ("Translation", "Translator"):
        from seq2seq_cli import translation

        return getattr(translation, name)
    raise AttributeError(f"module 'seq2seq_cli' has no attribute {name!r}")
