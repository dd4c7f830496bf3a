"""P1: time of `rhlens score` per sample / plain Hugging Face `generate`, same prompts and tokens.

Baseline: ``generate`` with transformers' default attention (SDPA), greedy, KV cache; HF with
eager attention is a second column. rhlens (``rhlens.score.detect.score_sample``) prefills with SDPA
too (:mod:`rhlens.run.sdpa`) and runs only the decode steps through TransformerLens hooks, reading
the attention row of every query head, then computes the retrieval scores and the ROUGE gate.
Target: P1 <= 1.10 against SDPA.

    BENCH_THREADS=2 python benchmarks/bench_speed.py --length 2000 --samples 3 --repeats 2

Same work on both sides: rhlens prefills all but the prompt's last token and then runs one
forward per token it computes, the stop token (EOS or newline) included; ``generate`` is asked
for that many tokens. Runs alternate (rhlens, HF SDPA, HF eager, rhlens...) so that load on
the machine hits all alike; the ratio of the medians is reported, with rhlens' split of time
between the prefill and the decode steps.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import rhlens.score.detect as detect
from rhlens.models.bridge import smollm2_gguf_path
from rhlens.models.loading import load_model
from rhlens.niah.haystack import NEEDLES, default_haystack
from rhlens.niah.prompts import build_sample
from rhlens.score.detect import score_sample

TARGET = 1.10
MAX_NEW = 48


def plain_hf_model(attn_implementation: str | None):
    """SmolLM2 as a plain transformers model (no bridge); ``None``: transformers' default."""
    from transformers import AutoModelForCausalLM

    path = smollm2_gguf_path()
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, **kwargs
    )
    return model.eval()


def record_timings(sink: list):
    """Wrap the ``greedy_decode`` that ``score_sample`` calls to keep each trace's timings."""
    inner = detect.greedy_decode

    def wrapped(*args, **kwargs):
        trace = inner(*args, **kwargs)
        sink.append(trace.timings)
        return trace

    detect.greedy_decode = wrapped


def tokens_computed(tokenizer, answer: str) -> int:
    """Forwards rhlens ran after the prefill: the answer's tokens, plus the stop token unless
    it ran into ``MAX_NEW``."""
    n = len(tokenizer(answer, add_special_tokens=False)["input_ids"])
    return min(MAX_NEW, n + 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--length", type=int, default=2000)
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-eager", action="store_true", help="skip the HF eager column")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    torch.set_grad_enabled(False)

    bridge = load_model("smollm2-135m", device="cpu")
    tok = bridge.tokenizer
    baselines = {"sdpa": plain_hf_model(None)}
    if baselines["sdpa"].config._attn_implementation != "sdpa":
        raise SystemExit("transformers' default attention is not SDPA here; nothing to compare.")
    if not args.no_eager:
        baselines["eager"] = plain_hf_model("eager")
    hay = default_haystack()
    samples = [build_sample(tok, NEEDLES[i], hay, args.length, 0.5) for i in range(args.samples)]

    def hf_generate(model, ids, n_new):
        model.generate(ids[None], max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                       pad_token_id=tok.eos_token_id)

    # warm-up, untimed: first calls pay one-off costs (allocator, kernels, hook setup)
    warm = build_sample(tok, NEEDLES[-1], hay, 300, 0.5)
    score_sample(bridge, warm, max_new_tokens=4)
    for hf in baselines.values():
        hf_generate(hf, warm.input_ids, 4)
    timings: list[dict] = []
    record_timings(timings)

    ours: list[float] = []
    theirs: dict[str, list[float]] = {k: [] for k in baselines}
    for r in range(args.repeats):
        t_ours = 0.0
        t_hf = dict.fromkeys(baselines, 0.0)
        for s in samples:
            t0 = time.perf_counter()
            rec = score_sample(bridge, s, max_new_tokens=MAX_NEW)
            t_ours += time.perf_counter() - t0
            n_new = tokens_computed(tok, rec["answer"])
            for name, hf in baselines.items():
                t0 = time.perf_counter()
                hf_generate(hf, s.input_ids, n_new)
                t_hf[name] += time.perf_counter() - t0
        ours.append(t_ours)
        for name in baselines:
            theirs[name].append(t_hf[name])
        split = timings[-len(samples):]
        prefill_s = sum(t["prefill_s"] for t in split)
        decode_s = sum(t["decode_s"] for t in split)
        cols = "   ".join(f"HF {name} {t_hf[name]:7.2f} s (ratio {t_ours / t_hf[name]:.3f})"
                           for name in baselines)
        print(f"[{r + 1}] rhlens score {t_ours:7.2f} s (prefill {prefill_s:.2f} s, decode steps "
              f"{decode_s:.2f} s)   {cols}", flush=True)
    p1 = statistics.median(ours) / statistics.median(theirs["sdpa"])
    extra = ""
    if "eager" in theirs:
        extra = f"; against HF eager {statistics.median(ours) / statistics.median(theirs['eager']):.3f}"
    print(f"P1 = {p1:.3f} against HF SDPA (target <= {TARGET}: "
          f"{'PASS' if p1 <= TARGET else 'FAIL'}){extra}  (length {args.length}, "
          f"{args.samples} samples, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
