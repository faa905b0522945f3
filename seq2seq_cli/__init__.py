"""s2s: attention RNN machine translation from the command line, and from Python::

    from seq2seq_cli import Translator

    translator = Translator.load("runs/toy", device="cpu", beam_size=5)
    translator.translate(["The man sees the dog."])
"""

__version__ = "0.1.0"
__all__ = ["Translation", "Translator", "__version__"]


def __getattr__(name: str):
    # Imported on first use, so that `s2s --help` does not wait for PyTorch.
    if name in ("Translation", "Translator"):
        from seq2seq_cli import translation

        return getattr(translation, name)
    raise AttributeError(f"module 'seq2seq_cli' has no attribute {name!r}")
