"""Needle-in-a-haystack prompts: needles and haystacks, the prompt builder, the grid of prompts, the
literal and non-literal needle sets, and how answers are scored."""
