"""The operators: fn and layer definitions as sympy element formulas, the prelude, the scalar primitives."""
