"""The jinja2 environment every backend renders its templates with."""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

import jinja2


@lru_cache(maxsize=None)
def environment() -> jinja2.Environment:
    def load(name):
        return resources.files("nncc.templates").joinpath(name).read_text(encoding="utf-8")

    return jinja2.Environment(loader=jinja2.FunctionLoader(load), keep_trailing_newline=True,
                              undefined=jinja2.StrictUndefined, autoescape=False)
