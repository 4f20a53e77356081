"""generated/ is exactly what the compiler gives for examples/ today."""
import importlib.util

import pytest

from regenerate import ROOT, expected

GOLDEN = expected()


@pytest.mark.parametrize("path", sorted(GOLDEN), ids=lambda p: p.name)
def test_golden_file_is_current(path):
    assert path.exists(), f"{path.name} is missing: run python tests/regenerate.py"
    assert path.read_text(encoding="utf-8") == GOLDEN[path], \
        f"{path.name} is stale: run python tests/regenerate.py and review the diff"


MODULES = sorted(p for p in GOLDEN if p.suffix == ".py")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_golden_module_imports_only_numpy(path):
    imports = [line for line in GOLDEN[path].splitlines() if line.startswith(("import ", "from "))]
    assert imports == ["import numpy as np"]
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert set(module.PARAM_SHAPES) == set(module.init_params(0))


def test_every_example_has_a_golden_file():
    stems = {p.stem for p in (ROOT / "examples").glob("*.nn")}
    assert stems and stems == {p.stem for p in MODULES}
    assert stems == {p.stem for p in GOLDEN if p.suffix == ".md"}
    assert stems == {p.stem for p in GOLDEN if p.suffix == ".c"}
