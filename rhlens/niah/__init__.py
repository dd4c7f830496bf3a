"""Needle-in-a-haystack prompts: needles and haystacks, the prompt builder, the grid of prompts, and
how answers are scored."""
