"""Downstream tasks that must look back at the context (paper, section 4), as prompts.

* extractive QA: :func:`make_qa_items` writes profiles of invented towns, with questions whose
  answers are spans of the profile. The paper used recent news with GPT-4-written questions, so
  that memory cannot answer; invented entities do the same offline. A fixed set ships with
  rhlens (``ch07_extractqa.json``, written by ``scripts/make_extractqa.py``, read by
  :func:`load_qa_items`), so every machine runs the same items;
* chain of thought: :func:`make_word_problems` writes two-step word problems over facts stated
  in the context (look up two quantities, add them: a stand-in for GSM8K that a 135M model
  solves with chain of thought); :func:`make_cot_tasks` writes chains of variable assignments
  (harder: several dependent look-ups; :func:`eval_chain` computes the answer);
  :func:`gsm8k_tasks` loads GSM8K itself through Hugging Face ``datasets`` (network needed).

:func:`qa_prompt` and :func:`cot_prompt` turn them into prompts; :mod:`rhlens.apps.downstream`
evaluates them under head masks.

>>> items = make_qa_items(3, seed=0)
>>> items[0].answer in items[0].context
True
>>> tasks = make_cot_tasks(2, steps=2, seed=0)
>>> tasks[0].answer == eval_chain(tasks[0].lines)[tasks[0].question[-2]]
True
>>> print(make_word_problems(1, seed=0)[0].reasoning)
Grace has 1 apple. Max has 3 apples. 1 + 3 = 4. The answer is 4.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

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


#: The ExtractQA set rhlens ships (``rhlens.data``), written by ``scripts/make_extractqa.py``.
QA_DATA = "ch07_extractqa.json"


def qa_items_json(items: Sequence[QAItem], **source) -> str:
    """``items`` as the JSON text of a shipped QA file; ``source`` (e.g. the generator's
    arguments) is recorded beside them so the file says how it was made."""
    return json.dumps({"source": source, "items": [asdict(it) for it in items]}, indent=1) + "\n"


def load_qa_items(path: str | Path | None = None, n: int | None = None) -> list[QAItem]:
    """The first ``n`` (default: all) QA items of a file written by :func:`qa_items_json`;
    default: the set rhlens ships (:data:`QA_DATA`), the same on every machine.

    Raises:
        ValueError: ``n`` is below 1, or an item's answer is not a span of its context.
    """
    from .. import data

    if n is not None and n < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    raw = json.loads(Path(path if path is not None else data.path(QA_DATA)).read_text())
    items = [QAItem(r["context"], r["question"], tuple(r["answers"]), r["answer_prefix"])
             for r in raw["items"]]
    for i, it in enumerate(items):
        if not any(a in it.context for a in it.answers):
            raise ValueError(f"QA item {i}: no answer of {it.answers} is a span of its context; "
                             "an extractive item must be answerable by copying.")
    return items[:n]


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
    """A reasoning task over facts stated in its context.

    ``lines`` is the context (one fact or assignment a line), ``question`` what is asked,
    ``answer`` the integer result and ``reasoning`` the worked chain of thought (ending
    ``"The answer is N."``). ``kind`` names the one-shot example that introduces it
    (:func:`cot_prompt`): ``"chain"`` (variable chains) or ``"sum"`` (word problems).
    """

    lines: tuple[str, ...]
    question: str
    answer: int
    reasoning: str
    kind: str = "chain"


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
        tasks.append(CoTTask(tuple(all_lines), f"What is the value of {chain[-1]}?", value,
                             ", ".join(reasoning) + f". The answer is {value}.", "chain"))
    return tasks


_NAMES = ["Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Hugo", "Iris", "Jack",
          "Lena", "Max"]


def make_word_problems(n: int = 12, seed: int = 0, people: int = 2, max_value: int = 5,
                       thing: str = "apple") -> list[CoTTask]:
    """``n`` two-step word problems over facts stated in the context.

    The context says how many of ``thing`` each of ``people`` people has (one line each); the
    question asks how many two of them have together. Chain of thought looks both numbers up
    in the context, then adds them::

        Max has 3 apples.
        Grace has 1 apple.
        How many apples do Max and Grace have together?
        ->  Max has 3 apples. Grace has 1 apple. 3 + 1 = 4. The answer is 4.

    A stand-in for GSM8K's grade-school problems that a 135M model solves with chain of
    thought; ``people > 2`` adds people the question does not ask about (harder).
    """
    if n < 1 or people < 2 or max_value < 1:
        raise ValueError(f"need n >= 1, people >= 2 and max_value >= 1; got n={n}, "
                         f"people={people}, max_value={max_value}.")
    if people > len(_NAMES):
        raise ValueError(f"people must be at most {len(_NAMES)}, got {people}.")
    rng = random.Random(seed)

    def count(x: int) -> str:
        return f"{x} {thing}" + ("" if x == 1 else "s")

    tasks = []
    for _ in range(n):
        names = rng.sample(_NAMES, people)
        values = [rng.randint(1, max_value) for _ in names]
        a, b = sorted(rng.sample(range(people), 2))
        facts = [f"{p} has {count(x)}." for p, x in zip(names, values)]
        total = values[a] + values[b]
        reasoning = (f"{facts[a]} {facts[b]} {values[a]} + {values[b]} = {total}. "
                     f"The answer is {total}.")
        tasks.append(CoTTask(tuple(facts), f"How many {thing}s do {names[a]} and {names[b]} "
                             "have together?", total, reasoning, "sum"))
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


#: The one-shot example of each kind of task (GSM8K's problems take the word problem's).
EXAMPLES = {
    "chain": CoTTask(("m = 2", "r = 6", "d = m + 5", "x = r + 1", "p = d - 3"),
                     "What is the value of p?", 4,
                     "d = 2 + 5 = 7, p = 7 - 3 = 4. The answer is 4.", "chain"),
    "sum": CoTTask(("Lena has 2 pears.", "Hugo has 4 pears."),
                   "How many pears do Lena and Hugo have together?", 6,
                   "Lena has 2 pears. Hugo has 4 pears. 2 + 4 = 6. The answer is 6.", "sum"),
}


def _task_text(task: CoTTask) -> str:
    return "\n".join(task.lines) + "\n" + task.question


def cot_prompt(tokenizer, task: CoTTask | tuple[str, int], cot: bool) -> torch.Tensor:
    """``[n]`` prompt ids for a task, with a one-shot example in the chosen style.

    With ``cot=True`` the example shows the worked steps and the model's answer starts with
    ``"Let's compute step by step:"``; with ``cot=False`` it answers ``"The answer is"``
    directly. The example is of the task's kind (:data:`EXAMPLES`); GSM8K ``(question,
    answer)`` pairs are accepted too, with the word-problem example.
    """
    shot_task = EXAMPLES["sum" if isinstance(task, tuple) else task.kind]
    example = _task_text(shot_task)
    shot = (f"Let's compute step by step: {shot_task.reasoning}" if cot
            else f"The answer is {shot_task.answer}.")
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
