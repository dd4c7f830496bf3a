"""Analysing score maps: the paper's published maps, other methods' head maps, statistics and
comparisons (warned when two maps' cards say they were measured differently), and the head
detectors' table against the interventions."""
