"""Shared fixtures: tiny random-weight models of every architecture, and the embedded model."""

from __future__ import annotations

import pytest
import torch

from rhlens.models.loading import load_model
from rhlens.models.registry import ARCHITECTURES
from rhlens.models.tiny import tiny_model

torch.set_grad_enabled(False)


@pytest.fixture(scope="session", params=ARCHITECTURES)
def tiny(request):
    """A 2-layer random-weight model of each architecture (Llama, Mistral, Qwen2, Mixtral)."""
    return tiny_model(request.param)


@pytest.fixture(scope="session")
def tiny_llama():
    return tiny_model("llama")


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M-Instruct (loaded once per test session)."""
    return load_model("smollm2-135m", device="cpu")
