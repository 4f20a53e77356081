"""The .nn grammar, shipped as package data (nncc.grammar)."""
