"""Running a model over prompts: greedy decoding (with SDPA prefill), resumable sample logs, shards,
result files, and the map card beside every score file."""
