"""The version of nncc, which generated files record."""
__version__ = "0.1.0"
