"""nncc: a compiler from .nn network descriptions to standalone training code."""
__version__ = "0.1.0"
