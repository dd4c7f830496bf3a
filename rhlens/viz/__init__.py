"""Figures (static matplotlib) and the interactive explorers."""
