"""Needles, haystacks and prompts."""

import json

import pytest

from rhlens.models.bridge import embedded_tokenizer
from rhlens.niah.haystack import (
    NEEDLES,
    Needle,
    default_haystack,
    load_haystack,
    load_needles,
    needles_to_json,
)
from rhlens.niah.prompts import build_sample, insertion_point, sentence_end_ids


@pytest.fixture(scope="module")
def tok():
    return embedded_tokenizer()


def test_builtin_needles_are_complete():
    assert len(NEEDLES) >= 8
    for n in NEEDLES:
        assert n.answer.lower() in n.text.lower(), n
        assert n.question.endswith("?")
    assert len({n.text for n in NEEDLES}) == len(NEEDLES)


def test_default_haystack_is_prose():
    text = default_haystack()
    assert len(text) > 30_000
    assert ">>>" not in text
    assert text == load_haystack(None) == load_haystack("stdlib")


@pytest.mark.parametrize("length,depth", [(400, 0.0), (600, 0.5), (800, 1.0), (500, 0.3)])
def test_sample_has_exact_length_and_needle(tok, length, depth):
    hay = default_haystack()
    s = build_sample(tok, NEEDLES[0], hay, length, depth)
    assert s.input_ids.numel() == length
    start, end = s.needle_span
    needle_text = tok.decode(s.input_ids[start:end]).strip()
    assert needle_text == NEEDLES[0].text
    # the needle sits after a sentence end (or at the very start of the context)
    before = tok.decode(s.input_ids[start - 1 : start])
    assert before.rstrip().endswith((".", "!", "?", ">")) or depth == 0.0, before
    # the prompt ends with the answer prefix, in the chat template
    assert tok.decode(s.input_ids[-12:]).endswith(NEEDLES[0].answer_prefix)
    assert "<|im_start|>assistant" in tok.decode(s.input_ids)


def test_depth_moves_the_needle(tok):
    hay = default_haystack()
    spans = [build_sample(tok, NEEDLES[1], hay, 1000, d).needle_span[0] for d in (0.1, 0.5, 0.9)]
    assert spans[0] < spans[1] < spans[2]


def test_sentence_boundaries_come_from_the_tokenizer(tok):
    ids = tok("Cats sleep. Dogs bark! Why? Because", add_special_tokens=False)["input_ids"]
    enders = sentence_end_ids(tok, ids)
    texts = [tok.decode([i]) for i in enders]
    assert all(t.rstrip()[-1] in ".!?" for t in texts)
    assert len(enders) == 3


def test_insertion_point():
    hay = [5, 1, 5, 5, 1, 5, 5, 5]
    assert insertion_point(hay, 0.0, {1}) == 0
    assert insertion_point(hay, 1.0, {1}) == 5  # the last sentence end
    assert insertion_point([5, 1], 1.0, {1}) == 2
    assert insertion_point(hay, 0.5, {1}) == 2
    assert insertion_point(hay, 0.7, {1}) == 5
    assert insertion_point([5, 5, 5, 1, 5], 0.2, {1}) == 4  # none before: next boundary
    with pytest.raises(ValueError):
        insertion_point(hay, 1.5, {1})


def test_short_haystack_is_repeated(tok):
    s = build_sample(tok, NEEDLES[0], "A short text. It repeats.", 300, 0.5)
    assert s.input_ids.numel() == 300


def test_needle_longer_than_context_is_an_error(tok):
    with pytest.raises(ValueError, match="too short"):
        build_sample(tok, NEEDLES[0], default_haystack(), 60, 0.5)


def test_context_over_n_ctx_is_an_error(tok):
    with pytest.raises(ValueError, match="does not fit"):
        build_sample(tok, NEEDLES[0], default_haystack(), 9000, 0.5, n_ctx=8192)


def test_empty_haystack_is_an_error(tmp_path):
    f = tmp_path / "empty.txt"
    f.write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        load_haystack(f)
    with pytest.raises(FileNotFoundError):
        load_haystack(tmp_path / "missing.txt")


def test_haystack_folder(tmp_path):
    (tmp_path / "b.txt").write_text("Second essay.")
    (tmp_path / "a.txt").write_text("First essay.")
    assert load_haystack(tmp_path) == "First essay.\n\nSecond essay."


def test_needle_file_roundtrip(tmp_path):
    f = tmp_path / "needles.json"
    f.write_text(needles_to_json(list(NEEDLES[:3])))
    assert load_needles(f) == list(NEEDLES[:3])
    # the public code's key names work too
    f.write_text(json.dumps([{"needle": "X is 4.", "question": "What is X?", "real_needle": "4"}]))
    assert load_needles(f)[0] == Needle("X is 4.", "What is X?", "4")
    f.write_text(json.dumps([{"question": "no needle"}]))
    with pytest.raises(ValueError):
        load_needles(f)
    with pytest.raises(ValueError, match="only 10"):
        load_needles(None, 11)
    assert len(load_needles(None, 2)) == 2


@pytest.mark.parametrize("field", ["text", "question", "answer_prefix"])
def test_a_needle_holding_the_context_marker_is_refused_when_read(files, no_model, one_error,
                                                                  score_args, field):
    """The marker would split the prompt template in two places; it is refused as the needle
    file is read, before the model loads, not as "too many values to unpack" after."""
    from rhlens.niah.haystack import CONTEXT_MARKER

    needle = {"text": "The secret word is plum.", "question": "What is the secret word?",
              "answer": "plum"}
    needle[field] = needle.get(field, "Answer:") + f" {CONTEXT_MARKER}"
    if field == "text":
        needle["text"] = f"{CONTEXT_MARKER} The secret word is plum."
    path = files / "needles.json"
    path.write_text(json.dumps([needle]))
    line = one_error(*score_args(files, files / "s.json", "--needle-file", path))
    assert f"Needle.{field} contains {CONTEXT_MARKER!r}" in line and str(path) in line
