"""P1: time of `rhlens score` per sample / plain Hugging Face `generate`, same prompts and tokens.

Baseline: ``generate`` with transformers' default attention (SDPA), greedy, KV cache; HF with
eager attention is a second column. rhlens (``rhlens.score.detect.score_sample``) prefills with SDPA
too (:mod:`rhlens.run.sdpa`) and runs only the decode steps through TransformerLens hooks, reading
the attention row of every query head, then computes the retrieval scores and the ROUGE gate.
Its decode steps compute SmolLM2's grouped-query attention without copying the shared KV heads
(:mod:`rhlens.run.gqa`), with every bridge component whose hooks are idle run as the module it
wraps (:mod:`rhlens.run.direct`; ``--decode-attention eager`` times the bridge's own attention
and components instead).
Target: P1 <= 1.03 against SDPA.

    BENCH_THREADS=2 python benchmarks/bench_speed.py --length 2000 --samples 3 --repeats 2

Same work on both sides: rhlens prefills all but the prompt's last token and then runs one
forward per token it computes, the stop token (EOS or newline) included; ``generate`` is asked
for that many tokens. Runs alternate (rhlens, HF SDPA, HF eager, rhlens...) so that load on
the machine hits all alike; the ratio of the medians is reported, with rhlens' split of time
between the prefill and the decode steps.

First, one layer's attention at a decode step over ``--length`` cached keys is timed alone
(median of 50 alternated calls, projections included): the bridge's own (``repeat_kv``),
rhlens' grouped one, and the Hugging Face SDPA module ``generate`` runs; then one whole decode
step (median of 20 alternated steps): the bridge as it is, rhlens' step, Hugging Face's.

``--batch B`` then times ``make demo``'s detection run (``detect_retrieval_heads`` on the
README's demo grid: 12 prompts, 2 needles at 3 depths in 500 and 1,000 tokens, the command's
defaults) at batch size 1 and B, alternated ``--repeats`` times, checks both give the same scores
to the last bit, and reports the throughput ratio (samples per second at B over samples per
second at 1, from the median times; target >= 1.3 on a CPU). ``--length`` does not apply to it.

    BENCH_THREADS=2 python benchmarks/bench_speed.py --batch 4 --repeats 3 --batch-only
"""

from __future__ import annotations

import argparse
import contextlib
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

TARGET = 1.03
BATCH_TARGET = 1.3
MAX_NEW = 48
#: The grid of ``make demo`` (the README's main job: ``rhlens score --model smollm2-135m
#: --lengths 500,1000 --depths 0.1,0.5,0.9 --needles 2``) with the command's defaults;
#: ``tests/benchmarks`` holds it to the Makefile.
DEMO = {"lengths": (500, 1000), "depths": (0.1, 0.5, 0.9), "needles": 2, "max_new_tokens": 48,
        "rouge_gate": 0.5}


def plain_hf_model(attn_implementation: str | None):
    """SmolLM2 as a plain transformers model (no bridge); ``None``: transformers' default."""
    from transformers import AutoModelForCausalLM

    path = smollm2_gguf_path()
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, **kwargs
    )
    return model.eval()


def layer_attention_ms(bridge, hf, n_keys: int, repeats: int = 50) -> dict[str, float]:
    """Median milliseconds of layer 0's attention at one decode step over ``n_keys`` cached
    keys: the bridge's own, rhlens' grouped one, Hugging Face's SDPA module (calls alternate,
    so that load on the machine hits all three alike)."""
    from transformers import DynamicCache

    from rhlens.run.gqa import grouped_decode_attention

    cfg = hf.config
    d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, 1, cfg.hidden_size, generator=gen)
    keys, values = (torch.randn(1, cfg.num_key_value_heads, n_keys, d_head, generator=gen)
                    for _ in range(2))
    position = hf.model.rotary_emb(hidden, torch.tensor([[n_keys]]))
    caches = {}
    for name in ("bridge", "grouped", "hf_sdpa"):
        caches[name] = DynamicCache(config=cfg)
        caches[name].update(keys, values, 0)
    calls = {"bridge": contextlib.nullcontext, "grouped": lambda: grouped_decode_attention(bridge),
             "hf_sdpa": contextlib.nullcontext}
    modules = {"bridge": bridge.blocks[0].attn, "grouped": bridge.blocks[0].attn,
               "hf_sdpa": hf.model.layers[0].self_attn}
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, context in calls.items():
            with context():
                t0 = time.perf_counter()
                modules[name](hidden_states=hidden, position_embeddings=position,
                              attention_mask=None, past_key_values=caches[name])
                times[name].append(time.perf_counter() - t0)
            caches[name].layers[0].crop(-1)  # back to n_keys: every call appends one key
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def decode_step_ms(bridge, hf, ids: torch.Tensor, repeats: int = 20) -> dict[str, float]:
    """Median milliseconds of one decode step after the prompt ``ids`` (all but its last token
    cached), alternated: the bridge as it is (its own attention, the plain cache), rhlens'
    decode step (:func:`rhlens.run.decode.decode_path`: grouped attention, idle components run
    as their modules, roomy cache), and Hugging Face's forward (what a ``generate`` step runs).
    Each bridge step reads every head's attention row, as rhlens' recorder does."""
    import copy

    from transformers import DynamicCache

    from rhlens.run.decode import decode_path, new_cache, prefill
    from rhlens.run.lean import reserve
    from rhlens.run.sdpa import sdpa_attention

    plain = new_cache(bridge)
    with sdpa_attention(bridge):
        prefill(bridge, ids[:-1], plain, ids.numel())
    roomy = reserve(copy.deepcopy(plain), 1)
    hf_cache = DynamicCache(config=hf.config)
    hf(ids[None, :-1], past_key_values=hf_cache, use_cache=True, logits_to_keep=1)
    argmax = torch.zeros(bridge.cfg.n_layers, bridge.cfg.n_heads, dtype=torch.long)

    def read(pattern, hook):
        argmax[int(hook.name.split(".")[1])] = pattern[0, :, -1].argmax(-1)

    def bridge_step(cache, fast: bool) -> float:
        with bridge.hooks(fwd_hooks=[(lambda name: name.endswith("hook_pattern"), read)]), \
                decode_path(bridge) if fast else contextlib.nullcontext():
            t0 = time.perf_counter()
            out, _ = bridge(ids[-1:][None], return_type="logits_and_cache", past_key_values=cache)
            int(out[0, -1].argmax())
            seconds = time.perf_counter() - t0
        cache.crop(-1)
        return seconds

    def hf_step() -> float:
        t0 = time.perf_counter()
        out = hf(ids[-1:][None], past_key_values=hf_cache, use_cache=True, logits_to_keep=1)
        int(out.logits[0, -1].argmax())
        seconds = time.perf_counter() - t0
        hf_cache.crop(-1)
        return seconds

    steps = {"bridge": lambda: bridge_step(plain, False),
             "rhlens": lambda: bridge_step(roomy, True), "hf": hf_step}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(step())
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def record_timings(sink: list, **options):
    """Wrap the ``greedy_decode`` that ``score_sample`` calls to keep each trace's timings
    (and pass it ``options``)."""
    inner = detect.greedy_decode

    def wrapped(*args, **kwargs):
        trace = inner(*args, **kwargs, **options)
        sink.append(trace.timings)
        return trace

    detect.greedy_decode = wrapped


def tokens_computed(tokenizer, answer: str) -> int:
    """Forwards rhlens ran after the prefill: the answer's tokens, plus the stop token unless
    it ran into ``MAX_NEW``."""
    n = len(tokenizer(answer, add_special_tokens=False)["input_ids"])
    return min(MAX_NEW, n + 1)


def batch_ratio(bridge, batch: int, repeats: int) -> float:
    """Median time of ``make demo``'s detection run (:data:`DEMO`, the command's defaults) at
    batch size 1 over that at ``batch`` (runs alternate); the two runs' scores must be equal."""
    from rhlens.niah.grid import Grid
    from rhlens.score.detect import detect_retrieval_heads

    grid = Grid(DEMO["lengths"], DEMO["depths"], needles=DEMO["needles"],
                max_new_tokens=DEMO["max_new_tokens"])
    n = len(grid.lengths) * len(grid.depths) * DEMO["needles"]
    times: dict[int, list[float]] = {1: [], batch: []}
    scores = {}
    for r in range(repeats):
        for b in (1, batch):
            t0 = time.perf_counter()
            run = detect_retrieval_heads(bridge, grid, batch_size=b, rouge_gate=DEMO["rouge_gate"],
                                         progress=False)
            times[b].append(time.perf_counter() - t0)
            scores[b] = run.scores
        print(f"[{r + 1}] the demo's detection ({n} prompts): batch 1 {times[1][-1]:.2f} s "
              f"({n / times[1][-1]:.3f} samples/s), batch {batch} {times[batch][-1]:.2f} s "
              f"({n / times[batch][-1]:.3f} samples/s)", flush=True)
    if not torch.equal(scores[1], scores[batch]):
        raise SystemExit(f"batch {batch} scored differently from batch 1; the ratio means nothing.")
    return statistics.median(times[1]) / statistics.median(times[batch])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--length", type=int, default=2000)
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-eager", action="store_true", help="skip the HF eager column")
    ap.add_argument("--decode-attention", choices=("grouped", "eager"), default="grouped",
                    help="rhlens' decode-step attention (default grouped; eager: the bridge's)")
    ap.add_argument("--batch", type=int, default=None,
                    help="also time a detection run at this batch size against batch size 1")
    ap.add_argument("--batch-only", action="store_true", help="only the batch ratio")
    args = ap.parse_args()
    if args.batch is not None and args.batch < 2:
        ap.error("--batch must be at least 2 (it is compared with batch size 1).")
    if args.batch_only and args.batch is None:
        ap.error("--batch-only needs --batch B.")
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    torch.set_grad_enabled(False)

    bridge = load_model("smollm2-135m", device="cpu")
    if args.batch is not None:
        ratio = batch_ratio(bridge, args.batch, args.repeats)
        print(f"batch throughput ratio = {ratio:.3f} (batch {args.batch} against 1, target >= "
              f"{BATCH_TARGET}: {'PASS' if ratio >= BATCH_TARGET else 'FAIL'})  (the demo grid, "
              f"{torch.get_num_threads()} threads)", flush=True)
        if args.batch_only:
            return
    tok = bridge.tokenizer
    baselines = {"sdpa": plain_hf_model(None)}
    if baselines["sdpa"].config._attn_implementation != "sdpa":
        raise SystemExit("transformers' default attention is not SDPA here; nothing to compare.")
    if not args.no_eager:
        baselines["eager"] = plain_hf_model("eager")
    ms = layer_attention_ms(bridge, baselines["sdpa"], args.length)
    print(f"one layer's decode attention over {args.length} keys: bridge {ms['bridge']:.2f} ms, "
          f"grouped {ms['grouped']:.2f} ms, HF SDPA {ms['hf_sdpa']:.2f} ms", flush=True)
    hay = default_haystack()
    step = decode_step_ms(bridge, baselines["sdpa"],
                          build_sample(tok, NEEDLES[0], hay, args.length, 0.5).input_ids)
    print(f"one decode step over {args.length} keys: bridge as it is {step['bridge']:.1f} ms "
          f"({step['bridge'] / step['hf']:.3f}x), rhlens {step['rhlens']:.1f} ms "
          f"({step['rhlens'] / step['hf']:.3f}x), HF {step['hf']:.1f} ms", flush=True)
    samples = [build_sample(tok, NEEDLES[i], hay, args.length, 0.5) for i in range(args.samples)]

    def hf_generate(model, ids, n_new):
        model.generate(ids[None], max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                       pad_token_id=tok.eos_token_id)

    timings: list[dict] = []
    record_timings(timings, decode_attention=args.decode_attention)
    # warm-up, untimed: first calls pay one-off costs (allocator, kernels, hook setup)
    warm = build_sample(tok, NEEDLES[-1], hay, 300, 0.5)
    score_sample(bridge, warm, max_new_tokens=4)
    for hf in baselines.values():
        hf_generate(hf, warm.input_ids, 4)

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
          f"{args.samples} samples, {torch.get_num_threads()} threads, "
          f"{args.decode_attention} decode attention)")


if __name__ == "__main__":
    main()
