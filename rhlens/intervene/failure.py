"""The two failure modes of the paper: incomplete retrieval and hallucination.

As more retrieval heads are masked, an answer goes from ``complete`` to ``incomplete`` (the
model retrieved part of the needle) to ``hallucinated`` (none of it): the classes of
:mod:`rhlens.niah.answers` (:func:`~rhlens.niah.answers.classify_answer`).

The paper reports that when retrieval fails, retrieval heads no longer look at the needle but
at the first tokens of the prompt (the *attention sink*). :func:`attention_mass` measures both
from the attention rows recorded by :func:`rhlens.run.decode.greedy_decode` (``record_rows``), and
:func:`failure_sweep` does so for the strongest heads left unmasked, over a K grid;
:func:`rhlens.viz.runs.plot_failure_modes` draws both.

The paper also says *when* incomplete retrieval starts: once the heads scoring above about 0.4
are masked. :func:`heads_above` turns score thresholds into the K that masks exactly the heads
above each, :func:`classify_sweep` classifies the answers of a stored K sweep (``rhlens niah
--sweep-k``), and :func:`onset` reads the first K (or threshold) at which a class appears.

Example::

    >>> df = failure_sweep(model, grid, scores, ks=[0, 8, 26])                     # doctest: +SKIP
    >>> failure_table(df)                                                          # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..niah.answers import CLASSES, classify_answer
from ..niah.grid import Grid
from ..run.decode import greedy_decode
from ..score.heads import head_names, top_heads
from .mask import Mask


def attention_mass(rows: torch.Tensor, needle_span: tuple[int, int], sink: int = 4) -> dict:
    """Where one head looked while answering.

    Args:
        rows: ``[T, n + T]`` the head's attention row at each decode step.
        needle_span: ``(start, end)`` of the needle in the prompt.
        sink: how many first tokens make the attention sink.

    Returns:
        ``{"needle": mean mass on the needle, "sink": mean mass on the first tokens}``
        (0 when nothing was generated).

    >>> rows = torch.tensor([[0.5, 0.0, 0.25, 0.25, 0.0]])
    >>> attention_mass(rows, (2, 4), sink=1)
    {'needle': 0.5, 'sink': 0.5}
    """
    if rows.numel() == 0 or rows.shape[0] == 0:
        return {"needle": 0.0, "sink": 0.0}
    start, end = needle_span
    return {"needle": float(rows[:, start:end].sum(-1).mean()),
            "sink": float(rows[:, :sink].sum(-1).mean())}


def failure_sweep(
    model,
    grid: Grid,
    scores: torch.Tensor,
    ks: Sequence[int],
    *,
    mask: Mask = Mask(),
    watch: int = 5,
    sink: int = 4,
    progress: bool = True,
    answered_only: bool = False,
) -> pd.DataFrame:
    """Mask the top-K heads for each K, classify each answer, and record where the
    strongest *unmasked* retrieval heads (ranks K+1 … K+``watch``) attend.

    With ``mask_mode="uniform"`` a masked head's attention is uniform by construction, so the
    heads watched are the next-ranked ones, still free to look where they like.

    Args:
        mask: the mode, prefill and means of every run (its heads are ignored).
        answered_only: keep only the prompts the unmasked model answers completely (a
            failure caused by masking needs an answer to lose); the number left out is in
            ``df.attrs["unanswered"]``.

    Returns:
        a row per (K, sample): ``k``, ``needle``, ``length``, ``depth``, ``answer``,
        ``category``, ``needle_mass`` and ``sink_mass`` (means over the watched heads and the
        decode steps), ``watched``.
    """
    samples = grid.samples(model.tokenizer, model.cfg.n_ctx)
    ranked = top_heads(scores, scores.numel())

    def run(k: int, sample) -> dict:
        masked, watched = ranked[:k], ranked[k : k + watch]
        trace = greedy_decode(model, sample.input_ids, grid.max_new_tokens,
                              mask=mask.with_heads(masked), record_rows=watched)
        masses = [attention_mass(trace.rows[h], sample.needle_span, sink) for h in watched]
        return {
            "k": k, "needle": sample.needle.text, "length": sample.length, "depth": sample.depth,
            "answer": trace.text, "category": classify_answer(sample.needle.answer, trace.text),
            "needle_mass": sum(m["needle"] for m in masses) / max(len(masses), 1),
            "sink_mass": sum(m["sink"] for m in masses) / max(len(masses), 1),
            "watched": head_names(watched),
        }

    by_k: dict[int, list[dict]] = {k: [] for k in ks}  # rows come out K by K, in ``ks`` order
    unanswered = 0
    bar = tqdm(total=len(samples) * len(ks), desc="failure modes", disable=not progress)
    for sample in samples:
        base = run(0, sample) if answered_only else None  # also the K = 0 row
        if base is not None and base["category"] != "complete":
            unanswered += 1
            bar.update(len(ks))
            continue
        for k in ks:
            by_k[k].append(base if k == 0 and base is not None else run(k, sample))
            bar.update(1)
    bar.close()
    df = pd.DataFrame([row for k in dict.fromkeys(ks) for row in by_k[k]],
                      columns=["k", "needle", "length", "depth", "answer", "category",
                               "needle_mass", "sink_mass", "watched"])
    df.attrs["unanswered"] = unanswered
    return df


def failure_table(df: pd.DataFrame, by: str = "k") -> pd.DataFrame:
    """Share of each category per K (rows: the values of column ``by``, columns: the three
    categories)."""
    table = pd.crosstab(df[by], df["category"], normalize="index")
    return table.reindex(columns=list(CLASSES), fill_value=0.0)


def heads_above(scores: torch.Tensor, thresholds: Sequence[float]) -> dict[float, int]:
    """For each threshold, how many heads score strictly above it: the K whose top-K mask
    (heads ranked by score) masks exactly the heads above the threshold.

    >>> heads_above(torch.tensor([[0.9, 0.45], [0.2, 0.0]]), [0.8, 0.4, 0.1])
    {0.8: 1, 0.4: 2, 0.1: 3}
    """
    return {float(t): int((scores > t).sum()) for t in thresholds}


def classify_sweep(sweep: pd.DataFrame, answered_only: bool = True) -> pd.DataFrame:
    """The answers of a K sweep (rows with ``needle``, ``length``, ``depth``, ``k``, ``kind``,
    ``answer`` and ``expected``, as ``rhlens niah --sweep-k`` writes them) with their
    ``category`` (:func:`~rhlens.niah.answers.classify_answer`).

    With ``answered_only`` only the prompts whose unmasked answer (``k == 0``) is complete are
    kept, since a failure caused by masking needs an answer to lose; how many prompts were left
    out is in ``attrs["unanswered"]``, how many kept in ``attrs["prompts"]``.

    Raises:
        ValueError: the sweep has no ``k == 0`` run while ``answered_only`` is set.
    """
    df = sweep.copy()
    df["category"] = [classify_answer(e, str(a) if pd.notna(a) else "")
                      for e, a in zip(df["expected"], df["answer"])]
    prompt = ["needle", "length", "depth"]
    base = df[df["k"] == 0].drop_duplicates(prompt)
    if answered_only and base.empty:
        raise ValueError("the sweep has no K = 0 run, so no prompt is known to be answered; "
                         "include 0 in --sweep-k, or pass answered_only=False.")
    kept = base[base["category"] == "complete"][prompt] if answered_only else base[prompt]
    out = df.merge(kept, on=prompt) if answered_only else df
    out.attrs["unanswered"] = len(base) - len(kept) if answered_only else 0
    out.attrs["prompts"] = len(kept) if answered_only else len(df.drop_duplicates(prompt))
    return out


def onset(table: pd.DataFrame, category: str = "incomplete", min_share: float = 0.0):
    """The first row of ``table`` (:func:`failure_table`, rows in masking order) whose share of
    ``category`` is above ``min_share``; ``None`` when there is none.

    >>> t = pd.DataFrame({"complete": [1.0, 0.9, 0.5], "incomplete": [0.0, 0.1, 0.3],
    ...                   "hallucinated": [0.0, 0.0, 0.2]}, index=[0, 5, 10])
    >>> onset(t), onset(t, "hallucinated"), onset(t, "incomplete", min_share=0.2)
    (5, 10, 10)
    """
    if category not in CLASSES:
        raise ValueError(f"category must be one of {CLASSES}, got {category!r}.")
    hits = table.index[table[category] > min_share]
    return hits.tolist()[0] if len(hits) else None


def attention_by_category(df: pd.DataFrame) -> pd.DataFrame:
    """Mean attention mass on the needle and on the sink per answer category."""
    out = df.groupby("category")[["needle_mass", "sink_mass"]].mean()
    out["n"] = df.groupby("category").size()
    return out.reindex([c for c in CLASSES if c in out.index])
