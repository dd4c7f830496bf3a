"""What is known of a model before it loads matches the loaded model."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_embedded_model_facts_match_the_loaded_model(smollm2):
    from rhlens.models.available import model_facts

    facts = model_facts("smollm2-135m")
    assert (facts["n_layers"], facts["n_heads"], facts["n_ctx"]) == (
        smollm2.cfg.n_layers, smollm2.cfg.n_heads, smollm2.cfg.n_ctx)
