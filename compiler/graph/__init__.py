"""Syntax tree -> the network graph: nodes, tensors, parameters, shapes and sizes."""
