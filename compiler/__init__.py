"""nncc: a compiler from .nn network descriptions to standalone training code.

    nncc.compile_source(text, file) -> Compiled   (.numpy_module() is the module's text)
    nncc.load_module(text, file)    -> the generated module, imported
    nncc.explain(path_or_source)    -> the derivation; renders as LaTeX, Markdown, HTML
"""
from .version import __version__

__all__ = ["__version__", "compile_source", "load_module", "explain"]


def compile_source(source, file="<string>"):
    from .api import compile_source as run
    return run(source, file)


def load_module(source, file="<string>", name=None):
    from .api import load_module as run
    return run(source, file, name)


def explain(path_or_source, file=None):
    """The derivation of a network's gradients, from a .nn path or its source text."""
    from .explanation.document import explain as run
    return run(path_or_source, file)
