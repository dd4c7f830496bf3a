"""The retrieval score: per sample, per run (detection), the heads it ranks, and how sure a map is
(bootstrap intervals, top-K stability, detection that stops once its top heads are stable); three
other head detectors beside it, computed in the same decode."""
