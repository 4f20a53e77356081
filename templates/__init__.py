"""The jinja2 templates, shipped as package data (nncc.templates)."""
