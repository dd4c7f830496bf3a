"""Downstream tasks that must look back at the context (paper, section 4), as prompts.

* extractive QA: :func:`make_qa_items` writes profiles of invented places, people and objects,
  with questions whose answers are spans of the profile (no world knowledge helps);
  :func:`squad_items` loads SQuAD through Hugging Face ``datasets`` (network needed);
* chain of thought: :func:`make_cot_tasks` writes chains of variable assignments whose answer
  needs several look-ups (:func:`eval_chain` computes it); :func:`gsm8k_tasks` loads GSM8K.

:func:`qa_prompt` and :func:`cot_prompt` turn them into prompts; :mod:`rhlens.apps.downstream`
evaluates them under head masks.

>>> items = make_qa_items(3, seed=0)
>>> items[0].answer in items[0].context
True
>>> tasks = make_cot_tasks(2, steps=2, seed=0)
>>> tasks[0].answer == eval_chain(tasks[0].lines)[tasks[0].target]
True
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..niah.haystack import Needle
from ..niah.prompts import chat_parts, encode

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
         f"How many people live in {town}?", population, "About"),
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
    return torch.tensor(encode(tokenizer, before + item.context + after), dtype=torch.long)


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
    return torch.tensor(encode(tokenizer, text + prefix), dtype=torch.long)
