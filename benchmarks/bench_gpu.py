"""GPU: rhlens greedy_decode / HF generate (SDPA) on a random Llama-2-7B-shaped model, up to 80K.

One random-weight model (32 layers, 32 heads, d_model 4096, MLP 11008, vocab 32000, bf16) is
built on the GPU; ``--shape mistral-7b`` gives it Mistral-7B's dimensions instead (8 KV heads
shared by 32 query heads, MLP 14336), where rhlens' decode steps run grouped-query attention
without copying the shared KV heads (:mod:`rhlens.run.gqa`; under Llama-2's multi-head attention
there is nothing to group, and the bridge's attention runs). First plain ``generate``
(transformers' SDPA attention, greedy, 16 new tokens) runs at every context length; then the
same model is wrapped in a TransformerBridge and ``rhlens.run.decode.greedy_decode`` (SDPA prefill,
hooked decode steps recording every query head's attention row) runs at the same lengths,
with the same number of new tokens. Peak memory is ``torch.cuda.max_memory_allocated`` over
each call (weights included, one model in memory at a time). Targets: time ratio <= 1.05,
peak memory ratio <= 1.01.

    python benchmarks/bench_gpu.py                       # 8K, 32K, 81,856 tokens (H100/H200)
    python benchmarks/bench_gpu.py --shape mistral-7b    # grouped-query attention (4 per KV head)
    python benchmarks/bench_gpu.py --eager               # also time the old eager prefill
    python benchmarks/bench_gpu.py --tiny                # small GQA shape: smoke test, CPU is fine

On a GPU the rows are also written to ``benchmarks/results/bench_gpu-<gpu>.json`` (``--out``):
the chapters' set-up lines then print the times of Llama-2-7B-shaped models from these measured
prefill and decode times instead of an estimate from peak rates (``rhlens.models.timing``).

Same work on both sides: for 16 new tokens ``generate`` runs one prefill forward of ``n``
tokens and 15 one-token forwards; rhlens prefills ``n - 1`` tokens and runs 16 one-token
decode steps (the first feeds the prompt's last token).

**Batched** (``--batch B``, default 4; ``--batch 1`` skips it): at the short lengths of the
paper's grid (``--batch-lengths``, default 1K, 4K, 8K), B prompts of one length through
``generate`` as one ``[B, n]`` batch (no padding: a detection grid's prompts of one length have
the same number of tokens) against ``rhlens.run.batch.greedy_decode_batch``, with the time and
peak-memory ratios; and the batch's throughput against rhlens one prompt at a time (samples per
second at B over at 1).

**The paper's grid** (one needle, 20 lengths from 1K to 80K × 10 depths): its time on this GPU,
*extrapolated* from the measured lengths (prefill and per-step decode times interpolated in
length, :func:`rhlens.models.timing.measured_minutes`; the batched per-sample time where a
length is within the batched lengths), printed as such. Target: at most 10 minutes on one
H100-class GPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import torch

TIME_TARGET = 1.05
MEMORY_TARGET = 1.01
#: the paper's detection grid for one needle (lengths up to 80K), and its target time
PAPER_LENGTHS = [round(1000 + i * (80_000 - 1000) / 19) for i in range(20)]
PAPER_DEPTHS = [i / 9 for i in range(10)]
GRID_TARGET_MIN = 10.0
LLAMA2_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000}
MISTRAL_7B = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000}
SHAPES = {"llama-2-7b": LLAMA2_7B, "mistral-7b": MISTRAL_7B}
TINY = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 32000}


def build(shape: dict, max_len: int, device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, LlamaConfig

    from rhlens.models.bridge import embedded_tokenizer

    tok = embedded_tokenizer()  # ids below 32000 are ordinary tokens of it
    config = LlamaConfig(**shape, max_position_embeddings=max_len, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        hf = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return hf.eval(), tok


class Meter:
    """Wall time and peak CUDA memory of one call (peak ``None`` off CUDA)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.t0
        self.peak_gb = torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None
        return False


#: new tokens per prompt of the paper's grid (a needle's answer and its stop)
GRID_NEW_TOKENS = 32


def paper_grid_minutes(rows: list[dict], batch_rows: list[dict]) -> float:
    """Minutes for the paper's grid of one needle, extrapolated from measured rows: per
    prompt, the prefill and :data:`GRID_NEW_TOKENS` decode steps interpolated in length
    (:func:`rhlens.models.timing.measured_minutes`); at a length no longer than the longest
    batched one, the batched time per sample instead when it is lower (what
    ``batch_size="auto"`` runs), scaled to the grid's new tokens."""
    from rhlens.models.timing import interpolate, measured_minutes
    from rhlens.niah.grid import Grid

    result = {"rows": rows}
    seconds = 0.0
    batch_rows = sorted(batch_rows, key=lambda r: r["length"])
    top = batch_rows[-1]["length"] if batch_rows else 0
    xs = [r["length"] for r in batch_rows]
    per_sample = [r["rhlens_s"] / r["batch"] * GRID_NEW_TOKENS / max(1, r["steps"])
                  for r in batch_rows]
    for n in PAPER_LENGTHS:
        one = measured_minutes(result, Grid([n], PAPER_DEPTHS, needles=1,
                                            max_new_tokens=GRID_NEW_TOKENS)) * 60
        if n <= top:
            one = min(one, len(PAPER_DEPTHS) * interpolate(xs, per_sample, n))
        seconds += one
    return seconds / 60


def against_hf(row: dict) -> tuple[float, str, bool]:
    """A row's time ratio against HF ``generate``, its memory columns (HF GB, rhlens GB,
    ratio; dashes off CUDA), and whether both ratios meet their targets."""
    ratio = row["rhlens_s"] / row["hf_s"]
    if row["hf_peak_gb"] is None:
        return ratio, "      -         -      -", ratio <= TIME_TARGET
    mem_ratio = row["rhlens_peak_gb"] / row["hf_peak_gb"]
    mem = f"{row['hf_peak_gb']:7.1f} {row['rhlens_peak_gb']:9.1f} {mem_ratio:6.3f}"
    return ratio, mem, ratio <= TIME_TARGET and mem_ratio <= MEMORY_TARGET


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=None,
                   help="context lengths (default 8192 32768 81856; --tiny: 256 512 1024)")
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--shape", choices=sorted(SHAPES), default="llama-2-7b",
                   help="the 7B shape: Llama-2's multi-head attention (default) or Mistral's "
                        "grouped-query attention")
    p.add_argument("--tiny", action="store_true",
                   help="a 2-layer GQA shape instead of 7B, on CPU when no GPU (smoke test)")
    p.add_argument("--batch", type=int, default=4, metavar="B",
                   help="prompts per batch in the batched comparison (default 4; 1 skips it)")
    p.add_argument("--batch-lengths", type=int, nargs="+", default=None,
                   help="lengths of the batched comparison (default 1024 4096 8192; "
                        "--tiny: 256 512)")
    p.add_argument("--eager", action="store_true",
                   help="also time greedy_decode(prefill_attention='eager')")
    p.add_argument("--out", default=None,
                   help="results file (default on a GPU: benchmarks/results/bench_gpu-<gpu>.json; "
                        "none for --tiny)")
    args = p.parse_args(argv)
    has_cuda = torch.cuda.is_available()
    if not has_cuda and not args.tiny:
        raise SystemExit("bench_gpu.py: no CUDA device, so the 7B-shaped table cannot be "
                         "measured here (run with --tiny for a CPU smoke test of the code path).")
    device = "cuda" if has_cuda else "cpu"
    dtype = torch.bfloat16 if has_cuda else torch.float32
    lengths = args.lengths or ([256, 512, 1024] if args.tiny else [8192, 32768, 81856])
    batch = max(1, args.batch)
    batch_lengths = ((args.batch_lengths or ([256, 512] if args.tiny else [1024, 4096, 8192]))
                     if batch > 1 else [])
    torch.set_grad_enabled(False)
    shape_cfg = TINY if args.tiny else SHAPES[args.shape]
    hf, tok = build(shape_cfg, max(lengths + batch_lengths) + args.new_tokens + 64, device, dtype)
    vocab = hf.config.vocab_size

    def random_prompt(n: int, seed: int) -> torch.Tensor:
        return torch.randint(100, vocab - 100, (n,), generator=torch.Generator().manual_seed(seed))

    prompts = {n: random_prompt(n, n) for n in lengths}
    batches = {n: [random_prompt(n, 1000 * n + b) for b in range(batch)] for n in batch_lengths}

    def generate(ids, n_new):
        ids = ids if ids.dim() == 2 else ids[None]
        hf.generate(ids.to(device), max_new_tokens=n_new, min_new_tokens=n_new,
                    do_sample=False, pad_token_id=tok.eos_token_id)

    generate(prompts[lengths[0]][:64], 2)  # warm-up
    rows = {n: {"length": n} for n in lengths}
    for n in lengths:
        with Meter(device) as m:
            generate(prompts[n], args.new_tokens)
        rows[n].update(hf_s=m.seconds, hf_peak_gb=m.peak_gb)
    batch_rows = {n: {"length": n, "batch": batch} for n in batch_lengths}
    for n in batch_lengths:
        with Meter(device) as m:
            generate(torch.stack(batches[n]), args.new_tokens)
        batch_rows[n].update(hf_s=m.seconds, hf_peak_gb=m.peak_gb)

    from rhlens.models.bridge import bridge_from_hf
    from rhlens.models.timing import slug
    from rhlens.run.batch import greedy_decode_batch
    from rhlens.run.decode import greedy_decode
    from rhlens.run.gqa import grouped_layers

    shape = "tiny 2-layer" if args.tiny else args.shape
    model = bridge_from_hf(hf, tok, f"random-{shape.replace(' ', '-')}-shape", device, dtype)
    grouped = len(grouped_layers(model))
    greedy_decode(model, prompts[lengths[0]][:64], max_new_tokens=2, stop_at_newline=False)
    for n in lengths:
        with Meter(device) as m:
            trace = greedy_decode(model, prompts[n], max_new_tokens=args.new_tokens,
                                  stop_at_newline=False)
        rows[n].update(rhlens_s=m.seconds, rhlens_peak_gb=m.peak_gb, steps=len(trace.tokens),
                       prefill_s=trace.timings["prefill_s"], decode_s=trace.timings["decode_s"])
        if args.eager:
            with Meter(device) as m:
                greedy_decode(model, prompts[n], max_new_tokens=args.new_tokens,
                              stop_at_newline=False, prefill_attention="eager")
            rows[n].update(eager_s=m.seconds, eager_peak_gb=m.peak_gb)
    for n in batch_lengths:
        with Meter(device) as m:
            traces = greedy_decode_batch(model, batches[n], max_new_tokens=args.new_tokens,
                                         stop_at_newline=False)
        batch_rows[n].update(rhlens_s=m.seconds, rhlens_peak_gb=m.peak_gb,
                             steps=min(len(t.tokens) for t in traces))
        with Meter(device) as m:
            for ids in batches[n]:
                greedy_decode(model, ids, max_new_tokens=args.new_tokens, stop_at_newline=False)
        batch_rows[n].update(one_at_a_time_s=m.seconds)

    name = torch.cuda.get_device_name() if has_cuda else "CPU"
    print(f"{shape} shape, random weights, {dtype}, {name}, {args.new_tokens} new tokens; "
          f"decode steps: grouped attention in {grouped} of {model.cfg.n_layers} layers")
    print(f"{'context':>8} {'HF SDPA s':>10} {'rhlens s':>9} {'ratio':>6} {'(prefill':>9} "
          f"{'decode)':>8} {'HF GB':>7} {'rhlens GB':>9} {'ratio':>6}")
    ok = True
    for n in lengths:
        r = rows[n]
        ratio, mem, met = against_hf(r)
        ok &= met
        print(f"{n:>8} {r['hf_s']:10.2f} {r['rhlens_s']:9.2f} {ratio:6.3f} {r['prefill_s']:9.2f} "
              f"{r['decode_s']:8.2f} {mem}")
        if r["steps"] < args.new_tokens:
            print(f"         (rhlens stopped at EOS after {r['steps']} tokens)")
    if batch_lengths:
        print(f"\nbatched: {batch} prompts of one length, generate on the [B, n] batch against "
              "greedy_decode_batch; throughput against rhlens one prompt at a time")
        print(f"{'context':>8} {'HF SDPA s':>10} {'rhlens s':>9} {'ratio':>6} {'HF GB':>7} "
              f"{'rhlens GB':>9} {'ratio':>6} {'1 at a time s':>14} {'throughput x':>13}")
    for n in batch_lengths:
        r = batch_rows[n]
        ratio, mem, met = against_hf(r)
        ok &= met
        r["throughput_ratio"] = r["one_at_a_time_s"] / r["rhlens_s"]
        print(f"{n:>8} {r['hf_s']:10.2f} {r['rhlens_s']:9.2f} {ratio:6.3f} {mem} "
              f"{r['one_at_a_time_s']:14.2f} {r['throughput_ratio']:13.2f}")
    grid_min = paper_grid_minutes([rows[n] for n in lengths], [batch_rows[n] for n in batch_lengths])
    print(f"\nthe paper's grid, one needle ({len(PAPER_LENGTHS)} lengths {PAPER_LENGTHS[0]:,}-"
          f"{PAPER_LENGTHS[-1]:,} x {len(PAPER_DEPTHS)} depths, {GRID_NEW_TOKENS} new tokens): "
          f"{grid_min:.1f} min, EXTRAPOLATED from the measured lengths "
          f"{sorted(set(lengths + batch_lengths))} (target <= {GRID_TARGET_MIN:.0f} min on one "
          "H100-class GPU)")
    if not args.tiny:
        ok &= grid_min <= GRID_TARGET_MIN
    for n in lengths:
        print(json.dumps(rows[n]))
    for n in batch_lengths:
        print(json.dumps(batch_rows[n]))
    out = args.out or (None if args.tiny else
                       Path(__file__).parent / "results" / f"bench_gpu-{slug(name)}.json")
    if out:
        result = {"gpu": name, "date": datetime.datetime.now().isoformat(timespec="seconds"),
                  "dtype": str(dtype).removeprefix("torch."), "new_tokens": args.new_tokens,
                  "shape": shape,
                  # the fields rhlens.models.timing matches against each paper model's config
                  "config": {"layers": shape_cfg["num_hidden_layers"],
                             "heads": shape_cfg["num_attention_heads"],
                             "kv_heads": shape_cfg["num_key_value_heads"],
                             "d_model": shape_cfg["hidden_size"],
                             "d_mlp": shape_cfg["intermediate_size"],
                             "vocab": shape_cfg["vocab_size"]},
                  "rows": [rows[n] for n in lengths],
                  "batch_rows": [batch_rows[n] for n in batch_lengths],
                  "paper_grid_minutes": {"minutes": grid_min, "extrapolated": True,
                                         "lengths": PAPER_LENGTHS, "depths": len(PAPER_DEPTHS),
                                         "new_tokens": GRID_NEW_TOKENS}}
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {out}")
    memory = "" if device == "cpu" else f", memory <= {MEMORY_TARGET}x"
    print(f"targets: time ratio <= {TIME_TARGET}{memory}: {'PASS' if ok else 'FAIL'}"
          + ("  (tiny shape: a smoke test, not the target measurement)" if args.tiny else ""))


if __name__ == "__main__":
    main()
