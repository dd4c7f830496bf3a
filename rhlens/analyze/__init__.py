"""Analysing score maps: the paper's published maps and comparisons."""
