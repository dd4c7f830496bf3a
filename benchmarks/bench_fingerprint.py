"""CPU: the cost of a run's weight fingerprint (:func:`rhlens.run.samplelog.weights_digest`),
which hashes every byte of every weight, on the embedded SmolLM2-135M, and what that projects
to for a 7B model in bf16 (13.5 GB of weights).

    OMP_NUM_THREADS=1 python benchmarks/bench_fingerprint.py

Prints the model's weight bytes, the best of three timings, the throughput in GB/s and the
projected time for 13.5 GB at that throughput (on an accelerator add the device-to-CPU copy,
which on a PCIe 4/5 GPU runs at 10-25 GB/s, well above the hash's rate).
"""

from __future__ import annotations

import time

from rhlens.models.loading import load_model
from rhlens.run.samplelog import weights_digest

SEVEN_B_BF16_BYTES = 13.5e9


def main() -> None:
    model = load_model("smollm2-135m", device="cpu")
    hf = getattr(model, "original_model", model)
    nbytes = sum(p.numel() * p.element_size() for p in hf.parameters())
    times = []
    for _ in range(3):
        start = time.perf_counter()
        digest = weights_digest(model)
        times.append(time.perf_counter() - start)
    best = min(times)
    rate = nbytes / best / 1e9
    print(f"SmolLM2-135M: {nbytes / 1e9:.3f} GB of weights, fingerprint {digest} in {best:.2f} s "
          f"(best of 3: {', '.join(f'{t:.2f}' for t in times)}) = {rate:.2f} GB/s")
    print(f"7B in bf16 ({SEVEN_B_BF16_BYTES / 1e9:.1f} GB): about {SEVEN_B_BF16_BYTES / 1e9 / rate:.0f} s "
          "of hashing on this CPU")


if __name__ == "__main__":
    main()
