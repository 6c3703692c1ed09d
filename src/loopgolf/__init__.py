"""loopgolf: train, compress and evaluate depth-recurrent compact language models."""
__version__ = "0.1.0"
