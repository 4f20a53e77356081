"""The Program as C99 loop nests, and the cffi module around them."""
