"""The retrieval score: per sample, per run (detection), and the heads it ranks; three other head
detectors beside it, computed in the same decode."""
