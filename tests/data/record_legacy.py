"""Record what rhlens 0.1.0 computed before scores read the answer span: the per-sample records
of ``score_sample`` over the whole needle sentence, with the unstemmed ROUGE gate.

``tests/data/legacy_needle_span.json`` was written by this script at commit ``b6bfa11``
(the last commit whose score read the needle sentence)::

    git checkout b6bfa11 -- rhlens && python tests/data/record_legacy.py && git checkout HEAD -- rhlens

``tests/score/test_oracle.py`` checks that ``score_span="needle"`` with ``rouge_stemmer=False``
reproduces every number in it exactly.
"""

import json
from pathlib import Path

import torch

from rhlens.models.loading import load_model
from rhlens.models.tiny import tiny_model
from rhlens.niah.grid import Grid
from rhlens.score.detect import score_sample

torch.set_grad_enabled(False)
OUT = Path(__file__).with_name("legacy_needle_span.json")


def records(model, grid: Grid) -> list[dict]:
    rows = []
    for sample in grid.samples(model.tokenizer, model.cfg.n_ctx):
        for mode in ("paper", "sum"):
            r = score_sample(model, sample, score_mode=mode, max_new_tokens=grid.max_new_tokens)
            rows.append({"mode": mode, "needle": sample.needle.text, "length": sample.length,
                         "depth": sample.depth, "answer": r["answer"], "rouge": r["rouge"],
                         "scores": r["scores"]})
    return rows


def main() -> None:
    out = {}
    for arch in ("llama", "mistral", "qwen2", "mixtral"):
        out[f"tiny-{arch}"] = records(tiny_model(arch), Grid([160], [0.5], needles=1,
                                                             max_new_tokens=6))
    out["smollm2-135m"] = records(load_model("smollm2-135m", device="cpu"),
                                  Grid([400], [0.3, 0.7], needles=2, max_new_tokens=24))
    OUT.write_text(json.dumps(out) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
