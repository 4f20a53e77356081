"""The Program rendered: a numpy module, C99 sources and their cffi module."""
