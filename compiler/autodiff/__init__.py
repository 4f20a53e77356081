"""The graph's formulas -> Jacobians and backward formulas, and their stable forms."""
