"""Downstream tasks under head masks: extractive QA and chain-of-thought (paper, section 4).

The paper masks retrieval heads during decoding and finds that tasks which must *look back*
at the context suffer (extractive QA, chain-of-thought reasoning) while answers from memory
do not. This module provides

* **tasks** that need the context and no world knowledge: :func:`make_qa_items` writes
  profiles of invented places, people and objects, with questions whose answers are spans
  of the profile; :func:`make_cot_tasks` writes chains of variable assignments whose
  answer needs several look-ups. :func:`squad_items` / :func:`gsm8k_tasks` load public sets
  through Hugging Face ``datasets`` (network needed, e.g. on a GPU machine);
* **metrics**: SQuAD token F1 (:func:`token_f1`) and exact numeric answers
  (:func:`extract_number`);
* **conditions**: named lists of TransformerLens decode hooks (``{"none": [], "top-20":
  hooks, ...}``). Any mask plugs in. :func:`head_conditions` builds the paper's three (no
  mask, top-K retrieval heads masked, K random heads with score below 0.1, several seeds);
* **batched decoding** (:func:`decode_conditions`): the prompt is prefilled *once* (masks act
  only at decode steps, as in the paper), then every condition decodes as one row of a
  batch, each row with its own hooks.

Example::

    >>> items = make_qa_items(3, seed=0)
    >>> items[0].answer in items[0].context
    True
    >>> token_f1("the Amber Heron", "Amber Heron!")
    1.0
    >>> tasks = make_cot_tasks(2, steps=2, seed=0)
    >>> tasks[0].answer == eval_chain(tasks[0].lines)[tasks[0].target]
    True
"""

from __future__ import annotations

import collections
import random
import re
import string
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

from .ablation import mask_hooks, random_heads, top_heads  # noqa: F401 (re-exported)
from .decode import Hook, _model_device, _new_cache, prefill
from .haystack import Needle, _encode, chat_parts

# --------------------------------------------------------------------------- head sets


def _uniform_mask(heads: Sequence[tuple[int, int]]) -> list[Hook]:
    """The paper's mask (uniform attention) for ``heads``: :func:`rhlens.ablation.mask_hooks`."""
    return mask_hooks(heads, mode="uniform")


def head_conditions(
    scores: torch.Tensor,
    k: int,
    seeds: Sequence[int] = (0, 1, 2),
    threshold: float = 0.1,
    masker: Callable[[Sequence[tuple[int, int]]], list[Hook]] | None = None,
) -> dict[str, list[Hook]]:
    """The paper's three conditions as named decode-hook lists.

    Top-K heads come from :func:`rhlens.ablation.top_heads`, random ones (score ``<=
    threshold``, one draw per seed) from :func:`rhlens.ablation.random_heads`; ``masker``
    turns heads into hooks (default: the uniform mask of :func:`rhlens.ablation.mask_hooks`).

    Returns ``{"none": [], "top-K": mask(top K), "random-K-s0": mask(K random), ...}``.
    """
    masker = masker or _uniform_mask
    conds = {"none": [], f"top-{k}": masker(top_heads(scores, k))}
    for seed in seeds:
        conds[f"random-{k}-s{seed}"] = masker(random_heads(scores, k, seed, threshold))
    return conds


# --------------------------------------------------------------------------- batched decode


def _matches(name_or_filter, name: str) -> bool:
    return name_or_filter(name) if callable(name_or_filter) else name_or_filter == name


def batched_hooks(conditions: Sequence[Sequence[Hook]]) -> list[Hook]:
    """Merge per-condition hook lists into hooks acting row by row on a batch.

    Row ``b`` of every hooked activation is passed (as a ``[1, ...]`` view) to the hooks of
    ``conditions[b]`` only. Works for any hook whose function treats the batch dimension
    as a batch (head masks, ablations, the compressed-cache mask...).
    """
    conditions = [list(c) for c in conditions]
    if not any(conditions):
        return []

    def wanted(name: str) -> bool:
        return any(_matches(f, name) for cond in conditions for f, _ in cond)

    def fn(tensor, hook):
        if tensor.shape[0] != len(conditions):
            raise ValueError(
                f"batched_hooks expected a batch of {len(conditions)} rows at {hook.name}, "
                f"got {tensor.shape[0]}."
            )
        for b, cond in enumerate(conditions):
            for f, h in cond:
                if _matches(f, hook.name):
                    row = tensor[b : b + 1]
                    out = h(row, hook)
                    if out is not None and out is not row:
                        tensor[b : b + 1] = out
        return tensor

    return [(wanted, fn)]


@torch.no_grad()
def decode_conditions(
    model,
    input_ids: torch.Tensor,
    conditions: Mapping[str, Sequence[Hook]],
    max_new_tokens: int = 16,
    stop_at_newline: bool = True,
    chunk_size: int = 512,
) -> dict[str, str]:
    """Greedy answers of ``input_ids`` (``[n]``) under every condition, in one batch.

    The prompt but its last token is prefilled once without hooks; the cache is then
    repeated once per condition and decoding runs with ``batched_hooks`` (each condition's
    hooks on its own row), as :func:`rhlens.decode.greedy_decode` would with
    ``decode_hooks=conditions[name]``.

    Returns:
        ``{condition name: decoded text}``.
    """
    if input_ids.ndim != 1 or input_ids.numel() < 2:
        raise ValueError("input_ids must be a 1-D tensor of at least two prompt tokens.")
    names = list(conditions)
    if not names:
        raise ValueError("conditions is empty: pass at least {'none': []}.")
    tok = model.tokenizer
    device = _model_device(model)
    ids = input_ids.to(device)
    cache = _new_cache(model)
    prefill(model, ids[:-1], cache, chunk_size)
    batch = len(names)
    if batch > 1:
        cache.batch_repeat_interleave(batch)
    nxt = ids[-1:].repeat(batch, 1)
    generated: list[list[int]] = [[] for _ in names]
    done = [False] * batch
    hooks = batched_hooks([conditions[n] for n in names])
    with model.hooks(fwd_hooks=hooks):
        for _ in range(max_new_tokens):
            out, cache = model(nxt, return_type="logits_and_cache", past_key_values=cache)
            tokens = out[:, -1].argmax(-1)
            for b, token in enumerate(tokens.tolist()):
                if done[b]:
                    continue
                if token == tok.eos_token_id or (
                    stop_at_newline and "\n" in tok.decode([token])
                    and tok.decode(generated[b]).strip()
                ):
                    done[b] = True
                else:
                    generated[b].append(token)
            if all(done):
                break
            nxt = tokens[:, None]
    return {name: tok.decode(gen) for name, gen in zip(names, generated)}


# --------------------------------------------------------------------------- QA metric


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces.

    >>> normalize_answer("The  Amber-Heron!")
    'amberheron'
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, truths: str | Sequence[str]) -> float:
    """SQuAD token F1 of ``prediction`` against the best of ``truths`` (bag of tokens).

    >>> round(token_f1("purple walrus", "purple walrus seventeen"), 3)
    0.8
    >>> token_f1("", "x")
    0.0
    """
    truths = [truths] if isinstance(truths, str) else list(truths)
    pred = normalize_answer(prediction).split()
    best = 0.0
    for truth in truths:
        gold = normalize_answer(truth).split()
        common = collections.Counter(pred) & collections.Counter(gold)
        same = sum(common.values())
        if not pred or not gold:
            f1 = float(pred == gold)
        elif same == 0:
            f1 = 0.0
        else:
            p, r = same / len(pred), same / len(gold)
            f1 = 2 * p * r / (p + r)
        best = max(best, f1)
    return best


# --------------------------------------------------------------------------- QA items


@dataclass(frozen=True)
class QAItem:
    """A document, a question about it, and the answer span(s) found in the document.

    ``answer_prefix`` ends the prompt so that the model answers right away.
    """

    context: str
    question: str
    answers: tuple[str, ...]
    answer_prefix: str = "Answer:"

    @property
    def answer(self) -> str:
        return self.answers[0]


_SYL = ["bra", "ven", "tol", "mir", "qua", "sel", "dor", "fen", "lio", "gar", "zan", "pel",
        "rho", "tis", "mun", "kel", "var", "osk", "ith", "ul", "ner", "cas", "bel", "yor"]
_COLOURS = ["amber", "teal", "crimson", "ivory", "cobalt", "saffron", "violet", "jade"]
_THINGS = ["copper bells", "glass lanterns", "woollen kites", "clay whistles", "paper boats",
           "silver thimbles", "cedar flutes", "salt lamps", "linen maps", "tin compasses"]
_ANIMALS = ["heron", "otter", "lynx", "badger", "falcon", "newt", "marten", "ibis"]
_FOODS = ["smoked plum dumplings", "barley pies with fennel", "sour cherry bread",
          "pickled walnut stew", "honey turnip cakes", "mustard seed soup"]
_FILLER = [
    "Visitors often remark on the quiet streets and the smell of the sea in the mornings.",
    "Most of the older houses are built from grey stone and have steep slate roofs.",
    "In winter the roads are frequently closed, and the town relies on its own stores.",
    "Children learn to swim in the river before they learn to ride a bicycle.",
    "The weekly market sells vegetables, cloth, tools and second-hand books.",
    "Local historians disagree about many details of the early settlement.",
    "A narrow bridge connects the old quarter with the newer houses on the hill.",
    "Several families have lived in the same houses for more than five generations.",
    "The climate is mild, although storms are common at the end of the summer.",
    "Travellers usually arrive by the coastal road, which winds through pine forests.",
    "The council meets once a month in a room above the bakery.",
    "Many residents keep small gardens where they grow beans, onions and herbs.",
]


def _name(rng: random.Random, parts: int = 2) -> str:
    return "".join(rng.choice(_SYL) for _ in range(parts)).capitalize()


def _person(rng: random.Random) -> str:
    return f"{_name(rng)} {_name(rng, 3)}"


def _profile(rng: random.Random) -> tuple[str, list[tuple[str, str, str, str]]]:
    """An invented town: (name, facts) with facts = (sentence, question, answer, prefix)."""
    town = _name(rng, 3)
    founder, mayor, poet = _person(rng), _person(rng), _person(rng)
    year = str(rng.randint(1200, 1890))
    river = f"the {_name(rng)} river"
    export = rng.choice(_THINGS)
    food = rng.choice(_FOODS)
    mascot = f"a {rng.choice(_COLOURS)} {rng.choice(_ANIMALS)}"
    festival = f"the Festival of {_name(rng)}"
    population = f"{rng.randint(2, 60)} thousand"
    f = [
        (f"The town of {town} was founded in {year} by a merchant named {founder}.",
         f"Who founded the town of {town}?", founder, f"The town of {town} was founded by"),
        (f"{town} lies on the banks of {river}, which floods almost every spring.",
         f"On which river does {town} lie?", river, f"{town} lies on the banks of"),
        (f"For centuries the main export of {town} has been {export}.",
         f"What is the main export of {town}?", export, f"The main export of {town} is"),
        (f"The current mayor of {town} is {mayor}, who was elected after a very close vote.",
         f"Who is the current mayor of {town}?", mayor, f"The current mayor of {town} is"),
        (f"The traditional dish of {town} is {food}, served at every wedding.",
         f"What is the traditional dish of {town}?", food, f"The traditional dish of {town} is"),
        (f"The emblem on the flag of {town} shows {mascot}.",
         f"What does the emblem on the flag of {town} show?", mascot,
         f"The emblem on the flag of {town} shows"),
        (f"Every autumn the town celebrates {festival}, which lasts three days.",
         f"Which festival does {town} celebrate every autumn?", festival,
         f"Every autumn {town} celebrates"),
        (f"The most famous poet born in {town} is {poet}.",
         f"Who is the most famous poet born in {town}?", poet,
         f"The most famous poet born in {town} is"),
        (f"Today about {population} people live in {town}.",
         f"How many people live in {town}?", population, f"About"),
        (f"The founding year of {town}, {year}, is carved above the door of the town hall.",
         f"In which year was {town} founded?", year, f"{town} was founded in"),
    ]
    return town, f


def make_qa_items(n: int = 12, seed: int = 0, filler: int = 14) -> list[QAItem]:
    """``n`` extractive QA items about invented towns (no answer is world knowledge).

    Each document mixes ten facts with ``filler`` neutral sentences in a random order
    (about 350-450 SmolLM2 tokens with the default ``filler=14``); the question asks for
    one fact, and its answer is a verbatim span of the document.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    rng = random.Random(seed)
    items = []
    for i in range(n):
        _, facts = _profile(rng)
        sentences = [s for s, *_ in facts] + rng.sample(_FILLER, min(filler, len(_FILLER)))
        sentences += [rng.choice(_FILLER) for _ in range(max(0, filler - len(_FILLER)))]
        rng.shuffle(sentences)
        context = " ".join(sentences)
        _, question, answer, prefix = facts[i % len(facts)]
        items.append(QAItem(context, question, (answer,), prefix))
    return items


def squad_items(n: int = 100, split: str = "validation", name: str = "squad") -> list[QAItem]:
    """The first ``n`` items of a Hugging Face extractive QA set (SQuAD format).

    Needs ``datasets`` and network access (``pip install 'rhlens[gpu]'``).
    """
    try:
        import datasets
    except ImportError as err:
        raise ImportError("squad_items needs `pip install datasets` (rhlens[gpu]).") from err
    ds = datasets.load_dataset(name, split=split)
    rows = ds.select(range(min(n, len(ds))))
    return [QAItem(r["context"], r["question"], tuple(r["answers"]["text"])) for r in rows]


QA_INSTRUCTION = (
    "Read the document below and answer the question with a short span copied from it."
)


def qa_prompt(tokenizer, item: QAItem) -> torch.Tensor:
    """``[n]`` prompt ids: chat template, instruction, document, question, answer prefix."""
    needle = Needle(item.context, item.question, item.answer, item.answer_prefix)
    before, after = chat_parts(tokenizer, needle, QA_INSTRUCTION)
    return torch.tensor(_encode(tokenizer, before + item.context + after), dtype=torch.long)


def evaluate_qa(
    model,
    items: Sequence[QAItem],
    conditions: Mapping[str, Sequence[Hook]],
    max_new_tokens: int = 12,
    progress: bool = True,
):
    """Token F1 of every item under every condition.

    Returns a pandas DataFrame with columns ``item``, ``condition``, ``output``, ``f1``
    (0-100) and ``answer``.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    rows = []
    for i, item in enumerate(tqdm(items, desc="extractive QA", disable=not progress)):
        ids = qa_prompt(model.tokenizer, item)
        outs = decode_conditions(model, ids, conditions, max_new_tokens)
        for cond, text in outs.items():
            rows.append({"item": i, "condition": cond, "output": text,
                         "f1": 100 * token_f1(text, item.answers), "answer": item.answer})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- chain of thought


@dataclass(frozen=True)
class CoTTask:
    """A chain of assignments (``lines``) and the variable asked for.

    ``reasoning`` is the worked chain of thought, ``answer`` the integer result.
    """

    lines: tuple[str, ...]
    target: str
    answer: int
    reasoning: str

    @property
    def question(self) -> str:
        return f"What is the value of {self.target}?"


def eval_chain(lines: Sequence[str]) -> dict[str, int]:
    """Values of the variables after executing assignment ``lines`` like ``"b = a + 3"``.

    >>> eval_chain(["a = 4", "b = a + 3", "c = b - 1"])
    {'a': 4, 'b': 7, 'c': 6}
    """
    env: dict[str, int] = {}
    for line in lines:
        var, expr = (s.strip() for s in line.split("="))
        parts = expr.split()
        value = env[parts[0]] if parts[0] in env else int(parts[0])
        for op, arg in zip(parts[1::2], parts[2::2]):
            x = env[arg] if arg in env else int(arg)
            value = value + x if op == "+" else value - x
        env[var] = value
    return env


_VARS = list("abcdefghjkmnpqrstuvwxyz")


def make_cot_tasks(n: int = 10, steps: int = 2, distractors: int = 2, seed: int = 0,
                   max_value: int = 9) -> list[CoTTask]:
    """``n`` variable-tracking tasks of ``steps`` dependent assignments plus distractors.

    Example task (``steps=2``)::

        q = 3
        k = 5
        w = q + 4
        f = k - 2
        t = w + 2
        What is the value of t?   ->  w = 3 + 4 = 7, t = 7 + 2 = 9

    Values stay in ``[0, 2 * max_value]``; the answer needs ``steps`` look-backs.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    rng = random.Random(seed)
    tasks = []
    for _ in range(n):
        names = rng.sample(_VARS, steps + 1 + 2 * distractors)
        chain, others = names[: steps + 1], names[steps + 1 :]
        start = rng.randint(1, max_value)
        lines = [f"{chain[0]} = {start}"]
        dist_lines = [f"{v} = {rng.randint(1, max_value)}" for v in others[:distractors]]
        value, reasoning = start, []
        body = []
        for prev, var in zip(chain, chain[1:]):
            x = rng.randint(1, max_value)
            op = "-" if value - x >= 0 and rng.random() < 0.5 else "+"
            new = value + x if op == "+" else value - x
            body.append(f"{var} = {prev} {op} {x}")
            reasoning.append(f"{var} = {value} {op} {x} = {new}")
            value = new
        for i, v in enumerate(others[distractors:]):
            src = others[i % max(1, distractors)] if distractors else chain[0]
            body.insert(rng.randint(0, len(body)), f"{v} = {src} + {rng.randint(1, max_value)}")
        # distractor constants go before the body so every variable is defined before use
        all_lines = lines + dist_lines + body
        tasks.append(CoTTask(tuple(all_lines), chain[-1], value,
                             ", ".join(reasoning) + f". The answer is {value}."))
    return tasks


def gsm8k_tasks(n: int = 50, split: str = "test") -> list[tuple[str, int]]:
    """``(question, integer answer)`` pairs from GSM8K (Hugging Face ``datasets``, network)."""
    try:
        import datasets
    except ImportError as err:
        raise ImportError("gsm8k_tasks needs `pip install datasets` (rhlens[gpu]).") from err
    ds = datasets.load_dataset("gsm8k", "main", split=split)
    out = []
    for row in ds.select(range(min(n, len(ds)))):
        final = row["answer"].split("####")[-1].strip().replace(",", "")
        out.append((row["question"], int(float(final))))
    return out


_EXAMPLE = CoTTask(("m = 2", "r = 6", "d = m + 5", "x = r + 1", "p = d - 3"), "p", 4,
                   "d = 2 + 5 = 7, p = 7 - 3 = 4. The answer is 4.")


def _task_text(task: CoTTask) -> str:
    return "\n".join(task.lines) + "\n" + task.question


def cot_prompt(tokenizer, task: CoTTask | tuple[str, int], cot: bool) -> torch.Tensor:
    """``[n]`` prompt ids for a task, with a one-shot example in the chosen style.

    With ``cot=True`` the example shows the worked steps and the model's answer starts with
    ``"Let's compute step by step:"``; with ``cot=False`` it answers ``"The answer is"``
    directly. GSM8K ``(question, answer)`` pairs are accepted too.
    """
    example = _task_text(_EXAMPLE)
    shot = (f"Let's compute step by step: {_EXAMPLE.reasoning}" if cot
            else f"The answer is {_EXAMPLE.answer}.")
    query = task[0] if isinstance(task, tuple) else _task_text(task)
    prefix = "Let's compute step by step:" if cot else "The answer is"
    messages = [
        {"role": "user", "content": example},
        {"role": "assistant", "content": shot},
        {"role": "user", "content": query},
    ]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=True)
    else:
        text = f"Q: {example}\nA: {shot}\n\nQ: {query}\nA: "
    return torch.tensor(_encode(tokenizer, text + prefix), dtype=torch.long)


def extract_number(text: str) -> int | None:
    """The integer after the last ``"answer is"``, else the last integer in ``text``.

    >>> extract_number("d = 2 + 5 = 7, p = 7 - 3 = 4. The answer is 4.")
    4
    >>> extract_number(" 12.")
    12
    >>> extract_number("no idea") is None
    True
    """
    tail = text.rsplit("answer is", 1)[-1] if "answer is" in text else text
    nums = re.findall(r"-?\d+", tail.replace(",", ""))
    if not nums:
        nums = re.findall(r"-?\d+", text.replace(",", ""))
    if not nums:
        return None
    return int(nums[0] if "answer is" in text else nums[-1])


def evaluate_cot(
    model,
    tasks: Sequence[CoTTask | tuple[str, int]],
    conditions: Mapping[str, Sequence[Hook]],
    cot: bool,
    max_new_tokens: int | None = None,
    progress: bool = True,
):
    """Accuracy of every task under every condition, with or without chain of thought.

    Returns a DataFrame with ``task``, ``condition``, ``cot``, ``output``, ``prediction``,
    ``answer``, ``correct`` (0 or 100).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    max_new_tokens = max_new_tokens or (48 if cot else 6)
    rows = []
    for i, task in enumerate(tqdm(tasks, desc=f"CoT={cot}", disable=not progress)):
        ids = cot_prompt(model.tokenizer, task, cot)
        answer = task[1] if isinstance(task, tuple) else task.answer
        outs = decode_conditions(model, ids, conditions, max_new_tokens)
        for cond, text in outs.items():
            pred = extract_number(text)
            rows.append({"task": i, "condition": cond, "cot": cot, "output": text,
                         "prediction": pred, "answer": answer,
                         "correct": 100.0 * (pred == answer)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- summaries


def condition_family(name: str) -> str:
    """``"random-20-s3"`` -> ``"random-20"`` (seeds pooled); other names unchanged."""
    return re.sub(r"-s\d+$", "", name)


def summarize_conditions(frame, metric: str = "f1", by: Sequence[str] = ()):
    """Mean ``metric`` per condition, seeds of random draws pooled as mean ± std over seeds.

    Returns a DataFrame with ``condition``, ``mean``, ``spread`` (std over seeds, 0 for
    single conditions), ``n_seeds`` and ``change`` (relative to ``"none"``, in percent).
    """
    import pandas as pd

    by = list(by)
    per_seed = frame.groupby(by + ["condition"], sort=False)[metric].mean().reset_index()
    per_seed["family"] = per_seed["condition"].map(condition_family)
    out = per_seed.groupby(by + ["family"], sort=False)[metric].agg(["mean", "std", "count"])
    out = out.reset_index().rename(columns={"family": "condition", "std": "spread",
                                            "count": "n_seeds"})
    out["spread"] = out["spread"].fillna(0.0)
    base = out[out["condition"] == "none"].set_index(by)["mean"] if by else \
        out.loc[out["condition"] == "none", "mean"]
    if by:
        ref = out.set_index(by).index.map(base)
        out["change"] = 100 * (out["mean"] - ref.values) / ref.values
    else:
        ref = float(base.iloc[0]) if len(base) else float("nan")
        out["change"] = 100 * (out["mean"] - ref) / ref if ref else float("nan")
    return pd.DataFrame(out)
