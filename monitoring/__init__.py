"""Evidently monitoring layer (see README.md here)."""
