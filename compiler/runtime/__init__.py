"""Code that generated modules carry with them, kept here as source to test."""
