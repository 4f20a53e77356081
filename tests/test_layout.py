"""The numpy module's tiled storage (backends/numpy/layout.py): which arrays a pool tiles,
and that every read of one -- as it lies, through a split index, or through a copy --
gives the numbers of the row-major computation."""
import numpy as np
import pytest

from conftest import compile_nn, fd_check, init_params, random_data
from nncc.api import compile_source
from nncc.backends.numpy import layout
from nncc.naming import grad_name

CONV_POOL = """
network convpool
input  x: [1, 8, 8]
target y: [10]
h = x |> conv2d(4, 3, padding=1) |> relu |> maxpool2d(2)
z = h |> flatten |> dense(10)
output z
loss = softmax_cross_entropy(z, y)
"""


def _layouts(source):
    program = compile_source(source, "t.nn").program
    g = program.graph
    fixed = {t.name for t in g.inputs + g.targets} | {g.output, g.loss}
    fixed |= {p.name for p in g.params} | {grad_name(p.name) for p in g.params}
    return layout.plan(program.loss + program.backward, program.shapes, fixed)


def test_a_pool_tiles_its_operand_and_the_elementwise_chain_around_it():
    tiled = _layouts(CONV_POOL)
    assert set(tiled) == {"conv2d_1", "relu_1", "d_relu_1", "d_conv2d_1"}
    for lay in tiled.values():  # [channels, window rows, window columns, batch, rows, columns]
        assert lay.factors == ((2, 2), (3, 2))
        assert lay.axes == ((1, ""), (2, "i"), (3, "i"), (0, ""), (2, "o"), (3, "o"))


def test_the_convolution_writes_the_tiled_layout_from_its_matrix_product():
    code = compile_source(CONV_POOL, "t.nn").numpy_module()
    assert "((2, 2), (3, 2))" in code  # the patches gathered with the positions split into tiles
    assert "np.dot(conv2d_1_weight.reshape(4, 9), t0.reshape(9, -1)" in code
    assert "_max_over(relu_1, (1, 2))" in code  # the pool reads whole blocks


@pytest.mark.parametrize("source", [
    CONV_POOL,
    # a pool whose tiles the next convolution reads through a shifted window (a copy), and
    # a residual sum reading the tiled array at its own positions
    CONV_POOL.replace("|> maxpool2d(2)\n", "\nr = h + (h |> relu)\nq = r |> maxpool2d(2) |> conv2d(2, 3, padding=1)\n")
             .replace("z = h |> flatten", "z = q |> flatten"),
    # stride-3 tiles on a 9x9 input, average and max
    CONV_POOL.replace("[1, 8, 8]", "[2, 9, 9]").replace("maxpool2d(2)", "maxpool2d(3)"),
])
def test_tiled_programs_match_finite_differences(source):
    module = compile_nn(source)
    params = init_params(module, seed=1)
    inputs, targets = random_data(module, batch=3)
    errors = fd_check(module, params, *inputs, *targets, seed=3)
    assert max(errors.values()) < 1e-6, errors
