"""What a paper model needs on a GPU (rhlens.models.resources): the memory arithmetic, checked by
hand for two models and against the models transformers builds from the same configs."""

from __future__ import annotations

import pytest
import torch

from rhlens.models.resources import (
    CONFIGS,
    MARGIN_BYTES,
    MARGIN_FRACTION,
    NF4_BYTES,
    download_bytes,
    kv_cache_bytes,
    need,
    plan,
    weights_bytes,
)


def test_qwen1_5_14b_at_32k_in_bf16_by_hand():
    """40 KV heads x 40 layers x 128 dims x 2 (K, V) x 2 bytes x 32768 tokens of KV cache on
    14.17B parameters x 2 bytes of weights."""
    kv = 40 * 40 * 128 * 2 * 2 * 32768
    assert kv == 26_843_545_600 and kv_cache_bytes("qwen1.5-14b", 32768) == kv
    embeddings = 2 * 152064 * 5120                                    # untied
    layer = (4 * 5120 * 5120 + 3 * 5120) + 3 * 5120 * 13696 + 2 * 5120  # attn (+ qkv bias), MLP, norms
    params = embeddings + 40 * layer + 5120
    assert params == 14_167_290_880 and CONFIGS["qwen1.5-14b"].params() == params
    assert weights_bytes("qwen1.5-14b") == 2 * params                  # 28.3 GB
    activations = 4 * 40 * 512 * 32768 * 2                            # a 512-query eager chunk
    n = need("qwen1.5-14b", 32768)
    assert (n.weights, n.kv_cache, n.activations) == (2 * params, kv, activations)
    body = 2 * params + kv + activations
    assert n.total == body + round(MARGIN_FRACTION * body + MARGIN_BYTES)
    assert round(n.total / 1e9, 1) == 67.6


def test_llama_2_7b_80k_in_4bit_by_hand():
    """Llama-2-7B's published 6,738,415,616 parameters; bitsandbytes quantises the 32 layers'
    q, k, v, o and MLP matrices (0.5 byte + a float32 scale per 64), the rest stays bf16."""
    c = CONFIGS["llama-2-7b-80k"]
    assert c.params() == 6_738_415_616
    linear = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    assert c.quantised_params() == linear == 6_476_005_376
    assert weights_bytes("llama-2-7b-80k", "4bit") == round(linear * (0.5 + 4 / 64)
                                                            + (c.params() - linear) * 2)
    assert NF4_BYTES == 0.5625
    assert c.kv_bytes_per_token() == 2 * 32 * 32 * 128 * 2 == 524_288
    assert round(kv_cache_bytes("llama-2-7b-80k", 32768) / 1e9, 1) == 17.2


def test_downloads_are_the_16_bit_checkpoints():
    assert round(download_bytes("mixtral-8x7b") / 1e9, 1) == 93.4     # 4 bit comes after
    assert download_bytes("llama-2-7b-80k") == 2 * 6_738_415_616


@pytest.mark.parametrize("key,cls", [("llama-2-7b-80k", "LlamaConfig"),
                                     ("qwen1.5-14b", "Qwen2Config"),
                                     ("mixtral-8x7b", "MixtralConfig")])
def test_parameter_counts_match_the_models_transformers_builds(key, cls):
    """The same config, built by transformers on the meta device (no memory): every parameter
    is counted, and the 4-bit share is exactly the weights of the ``nn.Linear`` modules that
    bitsandbytes replaces (all but the unembedding). For Mixtral that leaves out the experts."""
    import transformers
    from transformers import AutoModelForCausalLM

    c = CONFIGS[key]
    kw = dict(hidden_size=c.d_model, intermediate_size=c.d_mlp, num_hidden_layers=c.layers,
              num_attention_heads=c.heads, num_key_value_heads=c.kv_heads, vocab_size=c.vocab,
              tie_word_embeddings=c.tied)
    if c.experts > 1:
        kw.update(num_local_experts=c.experts, num_experts_per_tok=c.experts_per_token)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(getattr(transformers, cls)(**kw))
    assert sum(p.numel() for p in model.parameters()) == c.params()
    out = model.get_output_embeddings()
    linear = sum(m.weight.numel() for m in model.modules()
                 if type(m) is torch.nn.Linear and m is not out)
    assert linear == c.quantised_params()
    if c.experts > 1:
        assert linear < 0.03 * c.params()          # Mixtral's 4 bit saves under 3 % of it


def test_plan_prefers_bf16_then_4bit_then_a_shorter_prompt():
    assert plan("llama-2-7b-80k", 32000, 85.0e9).quant == "bf16"
    t4 = plan("llama-2-7b-80k", 32000, 15.8e9)
    assert (t4.quant, t4.max_tokens) == ("4bit", 14000) and t4.need.total <= 15.8e9
    assert need("llama-2-7b-80k", 15000, "4bit").total > 15.8e9       # 14K is the last that fits
    assert plan("mistral-7b-v0.2", 32000, 15.8e9) == plan("mistral-7b-v0.2", 32000, 15.8e9)
    assert plan("mistral-7b-v0.2", 32000, 15.8e9).max_tokens is None   # GQA: 8 KV heads
    assert not plan("mixtral-8x7b", 32000, 85.0e9).fits


def test_the_table_of_rhlens_models(capsys):
    from rhlens.cli import main

    assert main(["models", "--tokens", "32768"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("qwen1.5-14b ") and "GB" in line)
    assert "28.3 / 10.2 GB" in row and "67.6 /" in row and "open" in row
    assert "Mixtral's experts stay bf16" in out and "15.8e9" in out
    assert main(["models", "--tokens", "0"]) == 2
    err = capsys.readouterr()
    assert "--tokens must be a positive" in err.err and err.out == ""
