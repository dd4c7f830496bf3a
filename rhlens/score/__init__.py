"""The retrieval score: per sample, per run (detection), and the heads it ranks."""
