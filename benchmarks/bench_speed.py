"""P1: time of `rhlens score` per sample / plain Hugging Face `generate`, same prompts and tokens.

Both sides use eager attention and greedy decoding with a KV cache. rhlens additionally reads
the decode-step attention row of every query head (through TransformerLens hooks), computes
the retrieval scores and the ROUGE gate. Target: P1 <= 1.15.

    python benchmarks/bench_speed.py --length 2000 --samples 3 --repeats 2

Runs alternate (rhlens, HF, rhlens, HF...) so that load on the machine hits both alike; the
ratio of the medians is reported.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rhlens.detect import score_sample
from rhlens.haystack import NEEDLES, default_haystack
from rhlens.prompts import build_sample
from rhlens.models import load_model, smollm2_gguf_path


def plain_hf_model():
    """SmolLM2 as a plain transformers model (no bridge), eager attention."""
    from transformers import AutoModelForCausalLM

    path = smollm2_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--length", type=int, default=2000)
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_grad_enabled(False)

    bridge = load_model("smollm2-135m", device="cpu")
    hf = plain_hf_model()
    hay = default_haystack()
    samples = [build_sample(bridge.tokenizer, NEEDLES[i], hay, args.length, 0.5)
               for i in range(args.samples)]
    # warm-up, untimed: first calls pay one-off costs (allocator, kernels, hook setup)
    warm = build_sample(bridge.tokenizer, NEEDLES[-1], hay, 300, 0.5)
    score_sample(bridge, warm, max_new_tokens=4)
    hf.generate(warm.input_ids[None], max_new_tokens=4, do_sample=False,
                pad_token_id=bridge.tokenizer.eos_token_id)
    ours, theirs = [], []
    for _ in range(args.repeats):
        t_ours = t_hf = 0.0
        for s in samples:
            t0 = time.perf_counter()
            rec = score_sample(bridge, s, max_new_tokens=48)
            t_ours += time.perf_counter() - t0
            n_new = len(bridge.tokenizer(rec["answer"], add_special_tokens=False)["input_ids"])
            n_new = max(1, n_new)
            t0 = time.perf_counter()
            hf.generate(s.input_ids[None], max_new_tokens=n_new, min_new_tokens=n_new,
                        do_sample=False, pad_token_id=bridge.tokenizer.eos_token_id)
            t_hf += time.perf_counter() - t0
        ours.append(t_ours)
        theirs.append(t_hf)
        print(f"rhlens score {t_ours:7.2f} s   HF generate {t_hf:7.2f} s   ratio {t_ours / t_hf:.3f}",
              flush=True)
    p1 = statistics.median(ours) / statistics.median(theirs)
    print(f"P1 = {p1:.3f}  (length {args.length}, {args.samples} samples, "
          f"{torch.get_num_threads()} threads; target <= 1.15)")


if __name__ == "__main__":
    main()
