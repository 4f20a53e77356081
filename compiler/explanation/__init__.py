"""Derivations and the Program -> LaTeX, Markdown and HTML documents."""
