"""The Program as whole-array numpy statements, and the module around them."""
