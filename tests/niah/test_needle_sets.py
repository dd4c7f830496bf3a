"""The needle sets held out for the detectors' evaluation: literal and non-literal."""

from __future__ import annotations

import pytest

from rhlens.niah.needle_sets import NEEDLE_SETS, load_needle_set, shared_words


def test_nonliteral_needles_share_no_content_word_with_their_question():
    nonliteral, literal = load_needle_set("nonliteral"), load_needle_set("literal")
    assert NEEDLE_SETS == ("literal", "nonliteral") and len(nonliteral) >= 12
    assert all(not shared_words(n) for n in nonliteral), [(n.question, shared_words(n))
                                                           for n in nonliteral if shared_words(n)]
    assert all(shared_words(n) for n in literal)  # the built-ins echo their needle
    assert len({n.text for n in nonliteral} & {n.text for n in literal}) == 0
    with pytest.raises(ValueError, match="literal, nonliteral"):
        load_needle_set("paraphrased")
