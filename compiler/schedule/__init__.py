"""Derivations -> the Program, the one lowered form every backend renders."""
