"""Interventions on heads: masks, NIAH with masks, failure modes, activation patching and direct
logit attribution."""
