"""Running a model over prompts: greedy decoding (with SDPA prefill), resumable sample logs, shards
and result files."""
