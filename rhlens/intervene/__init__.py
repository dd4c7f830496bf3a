"""Interventions on heads: masks, NIAH with masks, failure modes, activation patching, direct
logit attribution, and the head detectors held against masking and patching."""
