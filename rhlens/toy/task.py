"""A synthetic needle-in-a-haystack task small enough to train on a laptop.

A prompt is a run of *filler* tokens (the haystack) with a *needle* inserted at a random
depth: a key token followed by a value of ``value_len`` tokens. After the haystack the key
comes again as the question, and the model must continue with the value::

    <bos> f12 f3 f40 k7 f93 f28 f9 f8 f8 f51 ... f2 k7   ->   f93 f28 f9 <eos>
                     ^^^^^^^^^^^^^^ needle (key + value)   ^^ query

Value tokens come from the same vocabulary as the filler (but appear nowhere else in the
prompt), so a model cannot spot the value by its kind of token: it must find the key and copy
what follows, token by token -- the copy-paste behaviour retrieval heads are defined by.

Optional *distractors* are other key/value pairs in the haystack, so the model must match
the key, not just find "the" needle.

The *alias* variant (``alias=True``) asks with a different token: key ``k3`` is named by its
alias ``a3``, a token that never occurs in the prompt before the question. The pairing
``k_i <-> a_i`` is fixed, so a model learns it in training; plain induction (find an earlier
occurrence of the current token, copy what followed it) finds no earlier ``a3`` and cannot
produce the first value token::

    <bos> f12 f3 k3 f93 f28 f9 f8 ... f2 a3   ->   f93 f28 f9 <eos>

The ``chat`` format wraps the same content in template
tokens (``<user> ... <sep> K7 <asst>``), the toy version of a chat fine-tune.

All formats share one vocabulary (:func:`toy_vocab`), so a model trained on one format can be
fine-tuned on another. :func:`toy_tokenizer` turns it into a Hugging Face tokenizer, so the
toy models go through exactly the same decoding and scoring code as a 7B model.

Example::

    >>> task = ToyTask(length=24, value_len=3)
    >>> batch = task.sample(2, seed=0)
    >>> batch.input_ids.shape, batch.values.shape      # [n, length], [n, value_len]
    (torch.Size([2, 24]), torch.Size([2, 3]))
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import torch

SPECIALS = ("<pad>", "<bos>", "<eos>", "<user>", "<sep>", "<asst>")
PAD, BOS, EOS, USER, SEP, ASST = range(len(SPECIALS))


@dataclass(frozen=True)
class Vocab:
    """Token id layout: specials, then keys ``k*``, then filler/value tokens ``f*``, then
    (``n_aliases > 0``) the aliases ``a*`` of the keys: ``a_i`` names ``k_i``.

    >>> v = Vocab(n_aliases=8)
    >>> v.tokens()[v.alias_of(v.keys[3])]
    'a3'
    """

    n_keys: int = 8
    n_filler: int = 32
    n_aliases: int = 0

    @property
    def keys(self) -> range:
        return range(len(SPECIALS), len(SPECIALS) + self.n_keys)

    @property
    def filler(self) -> range:
        return range(self.keys.stop, self.keys.stop + self.n_filler)

    @property
    def aliases(self) -> range:
        return range(self.filler.stop, self.filler.stop + self.n_aliases)

    @property
    def size(self) -> int:
        return self.aliases.stop

    def alias_of(self, key: int) -> int:
        """The id of the alias that names key ``key`` (an id in :attr:`keys`)."""
        i = key - self.keys.start
        if not 0 <= i < self.n_aliases:
            raise ValueError(f"Key id {key} has no alias in a vocabulary with "
                             f"n_aliases={self.n_aliases}.")
        return self.aliases.start + i

    def tokens(self) -> list[str]:
        """Token strings in id order (``<bos>``, ``k0``, ..., ``f0`` ..., ``a0`` ...)."""
        return [
            *SPECIALS,
            *(f"k{i}" for i in range(self.n_keys)),
            *(f"f{i}" for i in range(self.n_filler)),
            *(f"a{i}" for i in range(self.n_aliases)),
        ]


def toy_vocab(n_keys: int = 8, n_filler: int = 32, n_aliases: int = 0) -> Vocab:
    """The vocabulary shared by every format of the task (``n_aliases``: for the alias
    variant, one alias per key)."""
    return Vocab(n_keys, n_filler, n_aliases)


#: The vocabulary of the alias variant: one alias per key.
ALIAS_VOCAB = Vocab(n_keys=8, n_filler=32, n_aliases=8)


@functools.lru_cache(maxsize=8)
def toy_tokenizer(vocab: Vocab = Vocab()):
    """A word-level Hugging Face tokenizer for ``vocab`` (space-separated token strings).

    It prepends ``<bos>`` like Llama's, so ``TransformerBridge.to_tokens`` works unchanged.

    >>> tok = toy_tokenizer()
    >>> tok("k0 f1").input_ids
    [1, 6, 15]
    >>> tok.decode([6, 15])
    'k0 f1'
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = vocab.tokens()
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", BOS)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        add_bos_token=True,
        name_or_path="rhlens-toy",
    )


@dataclass
class ToyBatch:
    """``n`` prompts of the task and their answers.

    Attributes:
        input_ids: ``[n, length]`` prompts (the last token(s) ask the question).
        values: ``[n, value_len]`` the answer each prompt asks for.
        needle_start: ``[n]`` position of the needle's key; the value follows it.
        depth: ``[n]`` needle position as a fraction of the haystack.
    """

    input_ids: torch.Tensor
    values: torch.Tensor
    needle_start: torch.Tensor
    depth: torch.Tensor

    def needle_span(self, i: int, with_key: bool = False) -> tuple[int, int]:
        """``(start, end)`` of sample ``i``'s value tokens in the prompt (end exclusive);
        ``with_key`` includes the key."""
        start = int(self.needle_start[i])
        end = start + 1 + self.values.shape[1]
        return (start if with_key else start + 1, end)

    def full(self) -> torch.Tensor:
        """``[n, length + value_len + 1]`` prompt, value and ``<eos>``: a training sequence."""
        eos = torch.full((len(self.values), 1), EOS, dtype=torch.long)
        return torch.cat([self.input_ids, self.values, eos], 1)

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class ToyTask:
    """Parameters of the retrieval task.

    Args:
        length: prompt length in tokens (including ``<bos>`` and the question).
        value_len: tokens in the value.
        n_distractors: extra key/value pairs in the haystack.
        chat: wrap the prompt in chat template tokens (``<bos> <user> ... <sep> K <asst>``).
        alias: ask with the key's alias (``a_i`` for ``k_i``) instead of the key itself, so
            that plain induction cannot answer; needs a vocabulary with aliases
            (:data:`ALIAS_VOCAB`).
        vocab: the shared :class:`Vocab`.
        min_depth, max_depth: range of needle depths (fractions of the haystack).
    """

    length: int = 24
    value_len: int = 3
    n_distractors: int = 0
    chat: bool = False
    vocab: Vocab = Vocab()
    min_depth: float = 0.0
    max_depth: float = 1.0
    alias: bool = False

    def __post_init__(self):
        if self.alias and self.vocab.n_aliases < self.vocab.n_keys:
            raise ValueError("alias=True asks with an alias of each key; use a vocabulary with "
                             "one alias per key, e.g. vocab=ALIAS_VOCAB.")
        pairs = 1 + self.n_distractors
        if self.value_len * pairs >= self.vocab.n_filler // 2:
            raise ValueError(
                f"{pairs} needles of {self.value_len} distinct value tokens need a filler "
                f"vocabulary of more than {2 * self.value_len * pairs} tokens; raise vocab.n_filler."
            )
        if pairs > self.vocab.n_keys:
            raise ValueError(f"{pairs} needles need {pairs} distinct keys; raise vocab.n_keys.")
        if self.haystack_len < pairs * (1 + self.value_len):
            raise ValueError(
                f"length={self.length} leaves no room for {pairs} needles of "
                f"{1 + self.value_len} tokens; use a longer length."
            )

    @property
    def prefix(self) -> list[int]:
        return [BOS, USER] if self.chat else [BOS]

    def question(self, key: int) -> int:
        """The token that asks for ``key``'s value: the key itself, or its alias."""
        return self.vocab.alias_of(key) if self.alias else key

    @property
    def question_index(self) -> int:
        """Position of the question token, counted from the end of the prompt (-1 or -2)."""
        return -2 if self.chat else -1

    def suffix(self, key: int) -> list[int]:
        q = self.question(key)
        return [SEP, q, ASST] if self.chat else [q]

    @property
    def haystack_len(self) -> int:
        return self.length - len(self.prefix) - (3 if self.chat else 1)

    def with_(self, **changes) -> ToyTask:
        """A copy with some fields changed, e.g. ``task.with_(length=4 * task.length)``."""
        return replace(self, **changes)

    def sample(self, n: int, seed: int | None = None, generator: torch.Generator | None = None,
               depth: float | None = None) -> ToyBatch:
        """``n`` random prompts; deterministic for a given ``seed`` (or ``generator``).

        ``depth`` pins the needle's depth (a fraction in ``[0, 1]``) instead of drawing it.
        """
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else seed)
        voc, m, pairs = self.vocab, self.value_len, 1 + self.n_distractors
        free = self.haystack_len - pairs * (1 + m)  # filler tokens around the needles
        n_rest = voc.n_filler - pairs * m
        filler_idx = torch.randint(0, n_rest, (n, free), generator=generator)
        rows, values, starts, depths = [], [], [], []
        for i in range(n):
            keys = (torch.randperm(voc.n_keys, generator=generator)[:pairs] + voc.keys.start).tolist()
            perm = torch.randperm(voc.n_filler, generator=generator) + voc.filler.start
            vals = perm[: pairs * m].view(pairs, m)  # values: distinct, nowhere else
            filler = perm[pairs * m:][filler_idx[i]]
            if depth is None:
                u = torch.rand(1, generator=generator).item()
                d = self.min_depth + (self.max_depth - self.min_depth) * u
            else:
                d = float(depth)
            # insertion point (a filler index) of each needle; needle 0 is the target
            points = [round(d * free), *torch.randint(0, free + 1, (pairs - 1,), generator=generator).tolist()]
            order = sorted(range(pairs), key=lambda j: (points[j], j))
            seq, src, start = list(self.prefix), 0, -1
            for j in order:
                seq.extend(filler[src: points[j]].tolist())
                src = max(src, points[j])
                if j == 0:
                    start = len(seq)
                seq.extend([keys[j], *vals[j].tolist()])
            seq.extend(filler[src:].tolist())
            seq.extend(self.suffix(keys[0]))
            rows.append(seq)
            values.append(vals[0])
            starts.append(start)
            depths.append(d)
        return ToyBatch(
            input_ids=torch.tensor(rows, dtype=torch.long),
            values=torch.stack(values),
            needle_start=torch.tensor(starts, dtype=torch.long),
            depth=torch.tensor(depths),
        )
