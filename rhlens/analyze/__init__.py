"""Analysing score maps: the paper's published maps, comparisons, and the head detectors' table
against the interventions."""
