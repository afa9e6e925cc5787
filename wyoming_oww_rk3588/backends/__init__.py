"""Backends: one file each, chosen by name (see select.py)."""
