"""Parameters in and out of a generated module: .npz files and PyTorch state_dicts."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

import nn_zoo
from nncc.api import load_module

torch = pytest.importorskip("torch")


def _example(name):
    return next(m for m in nn_zoo.examples() if m.id == f"example-{name}")


def _c_module(model):
    import types

    from nncc.api import compile_source
    from nncc.backends.c.codegen import render_c_module
    module = types.ModuleType("params_io_c")
    exec(compile(render_c_module(compile_source(model.source, model.file_name)), "<c>", "exec"), module.__dict__)
    return module


@pytest.mark.parametrize("backend", ["numpy", pytest.param("c", marks=pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler"))])
def test_saved_parameters_load_checked(tmp_path, backend):
    model = _example("lenet")
    module = load_module(model.source, model.file_name) if backend == "numpy" else _c_module(model)
    params = module.init_params(4, np.float64)
    module.save_params(tmp_path / "p.npz", params)
    back = module.load_params(tmp_path / "p.npz")
    assert all(np.array_equal(back[k], params[k]) and back[k].dtype == np.float64 for k in params)
    assert module.load_params(tmp_path / "p.npz", np.float32)["dense_1.bias"].dtype == np.float32
    np.savez(tmp_path / "q.npz", **{k: v for k, v in params.items() if k != "conv2d_1.bias"})
    with pytest.raises(ValueError, match="missing 'conv2d_1.bias'"):
        module.load_params(tmp_path / "q.npz")
    np.savez(tmp_path / "q.npz", **{**params, "conv2d_1.bias": np.zeros(3)})
    with pytest.raises(ValueError, match=r"'conv2d_1.bias' has shape \(3,\), expected \(8,\)"):
        module.load_params(tmp_path / "q.npz")


@pytest.mark.parametrize("backend", ["numpy", pytest.param("c", marks=pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler"))])
def test_a_torch_sequential_state_dict_loads_by_order_and_goes_back(backend):
    """A Sequential's 0.weight, 0.bias, 2.weight, ... matched by order and shape; strict as
    PyTorch; the parameters written back load into the torch model with equal outputs."""
    model = _example("digits")
    module = load_module(model.source, model.file_name) if backend == "numpy" else _c_module(model)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).double()
    params = module.load_state_dict(net.state_dict())
    x = np.random.default_rng(0).uniform(0, 1, (5, 64))
    with torch.no_grad():
        np.testing.assert_allclose(module.forward(params, x), net(torch.tensor(x)).numpy(), rtol=1e-13, atol=1e-13)
    names = dict(zip(module.PARAM_SHAPES, net.state_dict()))
    for name in params:
        params[name] += 0.5
    other = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).double()
    other.load_state_dict(module.to_state_dict(params, names, convert=torch.from_numpy))
    with torch.no_grad():
        np.testing.assert_allclose(module.forward(params, x), other(torch.tensor(x)).numpy(), rtol=1e-13, atol=1e-13)
    sd = dict(net.state_dict())
    sd["extra.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match="unexpected keys 'extra.weight'"):
        module.load_state_dict(sd, names)
    loose = module.load_state_dict(sd, names, strict=False)
    np.testing.assert_array_equal(loose["dense_1.weight"], net.state_dict()["0.weight"].numpy())
    del sd["2.bias"], sd["extra.weight"]
    with pytest.raises(ValueError, match="missing keys 'dense_2.bias'"):
        module.load_state_dict(sd, {k: v for k, v in names.items() if v != "2.bias"})
    wrong = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    with pytest.raises(ValueError, match=r"'0.weight' \(shape \(16, 64\)\) would be 'dense_1.weight'"):
        module.load_state_dict(wrong.state_dict())
