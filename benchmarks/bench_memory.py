"""P2: extra peak memory of a NIAH decode at 8K tokens vs 2K tokens (target ratio <= 5).

Method (CPU): every case runs in a fresh subprocess. After the model is loaded and one short
warm-up decode has run (allocator pools and lazy buffers exist), the process resets its peak
RSS (``echo 5 > /proc/self/clear_refs`` resets ``VmHWM``), records ``VmRSS``, runs
``greedy_decode`` on a needle-in-a-haystack prompt, then reads ``VmHWM``. Extra peak =
``VmHWM - VmRSS(before)``: what the decode itself needed (KV cache, the prefill's transients,
logits), not the weights.

``--prefill sdpa`` (the default) measures what rhlens runs: the prompt prefilled in one pass with
SDPA attention, which builds no score matrix. ``--prefill eager`` measures the path a hook on the
prompt's attention takes (``prefill_hooks``, a mask with ``prefill=True``): the bridge's eager
attention in chunks of ``--chunk-size`` tokens, with the same runs in one pass (n x n scores per
layer) as the baseline that shows what chunking buys.

Method (GPU, when CUDA is available): a random-weight model with the Llama-2-7B shape (32
layers, 32 heads, d_model 4096, bf16) is built on the GPU, and ``torch.cuda.max_memory_allocated``
is read around a chunked ``greedy_decode`` at 8K, 16K and 32K tokens (goal: 32K within 80 GB).

Run::

    python benchmarks/bench_memory.py                 # CPU P2 with SmolLM2 (minutes)
    python benchmarks/bench_memory.py --prefill eager # the chunked eager prefill and its baseline
    python benchmarks/bench_memory.py --gpu           # adds the 7B-shaped GPU measurement
    python benchmarks/bench_memory.py --case 2000 512 --prefill eager  # one case, prints JSON
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _sample(model, length: int):
    from rhlens.niah.haystack import NEEDLES, default_haystack
    from rhlens.niah.prompts import build_sample

    return build_sample(model.tokenizer, NEEDLES[0], default_haystack(), length, 0.5)


def run_case(length: int, chunk_size: int, prefill: str = "sdpa", new_tokens: int = 4) -> dict:
    """One CPU measurement in this process (call it in a fresh one); ``chunk_size`` 0: the
    whole prompt in one pass."""
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    torch.set_grad_enabled(False)
    from rhlens.models.loading import load_model
    from rhlens.run.decode import greedy_decode

    model = load_model("smollm2-135m", device="cpu")
    sample = _sample(model, length)
    chunk = chunk_size or sample.input_ids.numel()
    greedy_decode(model, sample.input_ids[:64], max_new_tokens=2, chunk_size=chunk,
                  prefill_attention=prefill)
    gc.collect()
    _reset_peak()
    before = _status_kb("VmRSS")
    t0 = time.perf_counter()
    trace = greedy_decode(model, sample.input_ids, max_new_tokens=new_tokens,
                          stop_at_newline=False, chunk_size=chunk, prefill_attention=prefill)
    seconds = time.perf_counter() - t0
    peak = _status_kb("VmHWM")
    return {"length": int(sample.input_ids.numel()), "prefill": prefill, "chunk_size": chunk,
            "extra_peak_mb": (peak - before) / 1024, "rss_before_mb": before / 1024,
            "seconds": round(seconds, 1), "output": trace.text}


def _subprocess_case(length: int, chunk_size: int, prefill: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--case", str(length), str(chunk_size),
                          "--prefill", prefill], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_p2(short: int = 2000, long: int = 8000, chunk_size: int = 512, prefill: str = "sdpa",
           baseline: bool = True) -> list[dict]:
    """P2 of ``prefill``: SDPA in one pass, or eager in chunks with the one-pass baseline."""
    chunk = 0 if prefill == "sdpa" else chunk_size
    cases = [(short, chunk), (long, chunk)]
    baseline = baseline and prefill == "eager"
    if baseline:
        cases += [(short, 0), (long, 0)]
    rows = []
    for length, size in cases:
        row = _subprocess_case(length, size, prefill)
        print(json.dumps(row), flush=True)
        rows.append(row)
    ratio = rows[1]["extra_peak_mb"] / rows[0]["extra_peak_mb"]
    how = "SDPA in one pass" if prefill == "sdpa" else f"eager in chunks of {chunk_size}"
    print(f"P2 ({how}): extra peak {rows[1]['extra_peak_mb']:.0f} MB at "
          f"{rows[1]['length']} / {rows[0]['extra_peak_mb']:.0f} MB at {rows[0]['length']} tokens"
          f" = {ratio:.2f}  (target <= 5: {'PASS' if ratio <= 5 else 'FAIL'})")
    if baseline:
        full = rows[3]["extra_peak_mb"] / rows[2]["extra_peak_mb"]
        print(f"baseline, eager in one pass: {rows[3]['extra_peak_mb']:.0f} MB / "
              f"{rows[2]['extra_peak_mb']:.0f} MB = {full:.2f}")
    return rows


def gpu_7b(lengths=(8192, 16384, 32768), chunk_size: int = 512) -> list[dict]:
    """Peak CUDA memory of a chunked decode on a random 7B-shaped Llama (bf16)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from rhlens.models.bridge import bridge_from_hf, embedded_tokenizer
    from rhlens.run.decode import greedy_decode

    tok = embedded_tokenizer()
    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=32, vocab_size=len(tok),
                         max_position_embeddings=max(lengths) + 64, rope_theta=5e6)
    with torch.device("cuda"):
        hf = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model = bridge_from_hf(hf, tok, "random-llama-2-7b", "cuda", torch.bfloat16)
    weights = torch.cuda.memory_allocated()
    rows = []
    for n in lengths:
        ids = torch.randint(100, len(tok) - 100, (n,))
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        greedy_decode(model, ids, max_new_tokens=4, stop_at_newline=False, chunk_size=chunk_size)
        torch.cuda.synchronize()
        rows.append({"length": n, "peak_gb": torch.cuda.max_memory_allocated() / 2**30,
                     "extra_peak_gb": (torch.cuda.max_memory_allocated() - base) / 2**30,
                     "weights_gb": weights / 2**30, "seconds": round(time.perf_counter() - t0, 1),
                     "device": torch.cuda.get_device_name()})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", nargs=2, type=int, metavar=("LENGTH", "CHUNK"),
                   help="one case in this process (CHUNK 0: the whole prompt in one pass)")
    p.add_argument("--prefill", choices=("sdpa", "eager"), default="sdpa",
                   help="sdpa: what rhlens runs (default); eager: the hooked prefill in chunks")
    p.add_argument("--short", type=int, default=2000)
    p.add_argument("--long", type=int, default=8000)
    p.add_argument("--chunk-size", type=int, default=512)
    p.add_argument("--no-baseline", action="store_true",
                   help="with --prefill eager, skip the one-pass eager runs")
    p.add_argument("--gpu", action="store_true", help="also measure a 7B-shaped model on CUDA")
    args = p.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(*args.case, prefill=args.prefill)))
        return
    cpu_p2(args.short, args.long, args.chunk_size, args.prefill, baseline=not args.no_baseline)
    if args.gpu:
        import torch

        if torch.cuda.is_available():
            gpu_7b()
        else:
            print("No CUDA device: the 7B-shaped GPU measurement was not run.")


if __name__ == "__main__":
    main()
