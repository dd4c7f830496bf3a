"""Applications of retrieval heads: downstream tasks under masks, KV-cache compression."""
