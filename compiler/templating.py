"""The jinja2 environment every backend renders its templates with."""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import jinja2


@lru_cache(maxsize=None)
def environment() -> jinja2.Environment:
    def load(name):
        return resources.files("nncc.templates").joinpath(name).read_text(encoding="utf-8")

    env = jinja2.Environment(loader=jinja2.FunctionLoader(load), keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined, autoescape=False)
    env.filters.update(quoted_py=quoted_in_docstring, quoted_c=quoted_in_c_comment)
    return env


def quoted_in_docstring(text: str) -> str:
    """User text (a file path) shown inside a generated docstring: a double-quoted,
    escaped literal, so no quote, backslash or control character can end the docstring."""
    return json.dumps(str(text))


def quoted_in_c_comment(text: str) -> str:
    """User text shown inside a C /* */ comment: escaped, and unable to end the comment
    (or open another, which -Wcomment reports)."""
    return json.dumps(str(text)).replace("*/", "*\\/").replace("/*", "/\\*")
