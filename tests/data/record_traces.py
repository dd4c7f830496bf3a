"""Record the decode traces that ``tests/score/test_oracle.py`` scores with an independent oracle.

For each model, greedy-decode a few NIAH prompts and keep what the retrieval score is a function
of: the prompt's ids, the needle's and the answer's spans, the generated tokens and the key
position each query head attended to most at each step (``[steps, layers, query heads]``;
grouped-query models included: tiny Mistral, Qwen2 and Mixtral share 2 KV heads among 4 query
heads, SmolLM2 3 among 9). Written by::

    python tests/data/record_traces.py

Rerun it when prompts change (the test rebuilds each prompt and says so when it differs).
"""

import json
from pathlib import Path

import torch

from rhlens.models.loading import load_model
from rhlens.models.tiny import tiny_model
from rhlens.niah.grid import Grid
from rhlens.run.decode import greedy_decode

torch.set_grad_enabled(False)
OUT = Path(__file__).with_name("decode_traces.json")


def traces(name: str, model, grid: Grid) -> list[dict]:
    rows = []
    for sample in grid.samples(model.tokenizer, model.cfg.n_ctx):
        trace = greedy_decode(model, sample.input_ids, grid.max_new_tokens)
        rows.append({
            "model": name, "needle": sample.needle.text, "length": sample.length,
            "depth": sample.depth, "prompt_style": grid.prompt_style,
            "prompt_ids": sample.input_ids.tolist(), "needle_span": list(sample.needle_span),
            "answer_span": list(sample.answer_span), "tokens": trace.tokens.tolist(),
            "argmax": trace.argmax.tolist(), "text": trace.text,
        })
    return rows


def main() -> None:
    out = []
    for arch in ("llama", "mistral", "qwen2", "mixtral"):
        out += traces(f"tiny-{arch}", tiny_model(arch), Grid([160], [0.5], needles=1,
                                                            max_new_tokens=6))
    smol = load_model("smollm2-135m", device="cpu")
    out += traces("smollm2-135m", smol, Grid([400], [0.3], needles=2, max_new_tokens=24))
    out += traces("smollm2-135m", smol, Grid([400], [0.7], needles=1, max_new_tokens=24,
                                             prompt_style="public-code"))
    OUT.write_text(json.dumps(out) + "\n")
    print(f"wrote {len(out)} traces to {OUT}")


if __name__ == "__main__":
    main()
