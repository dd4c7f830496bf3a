"""Models: the paper's checkpoints and the embedded SmolLM2, loaded as TransformerLens bridges;
RoPE surgery; tiny random-weight stand-ins."""
