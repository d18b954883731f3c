"""Compiled extension modules (built from src/_core/ by setup.py)."""
