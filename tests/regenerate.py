"""Regenerate generated/ from examples/: `python tests/regenerate.py`.

generated/ holds the compiler's output for every example (the numpy module,
the derivation in Markdown and the C sources in generated/c/), committed as golden files; tests/test_generated.py fails when they are stale.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
GENERATED = ROOT / "generated"


def expected() -> dict[Path, str]:
    """Each golden file and the text the compiler gives for it now."""
    from nncc.api import compile_source
    from nncc.backends.c.codegen import render_c_files
    from nncc.explanation.document import build

    out = {}
    for src in sorted(EXAMPLES.glob("*.nn")):
        rel = src.relative_to(ROOT).as_posix()
        compiled = compile_source(src.read_text(encoding="utf-8"), rel)
        out[GENERATED / f"{src.stem}.py"] = compiled.numpy_module()
        out[GENERATED / f"{src.stem}.md"] = build(compiled).markdown()
        for name, text in render_c_files(compiled).items():
            out[GENERATED / "c" / name] = text
    return out


def main() -> int:
    GENERATED.mkdir(exist_ok=True)
    for path, text in expected().items():
        old = path.read_text(encoding="utf-8") if path.exists() else None
        if old != text:
            path.parent.mkdir(exist_ok=True)
            path.write_text(text, encoding="utf-8", newline="\n")
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
