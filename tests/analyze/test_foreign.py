"""Other methods' head maps: small files written here in DuoAttention's, HeadKV's and QRHead's
formats (as :mod:`rhlens.analyze.foreign` documents them) load into maps that compare and mask."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rhlens.analyze.compare import compare_scores, same_family_test
from rhlens.analyze.foreign import expand_kv, kv_heads, load_duo_attention, load_headkv, load_map, load_qrhead
from rhlens.errors import UsageError
from rhlens.intervene.mask import Mask
from rhlens.score.heads import top_heads

#: A 3-layer model with 8 query heads over 2 KV heads (groups of 4).
GATES = np.array([[0.02, 0.95], [1.2, 0.10], [0.40, -0.1]])


@pytest.fixture
def duo(tmp_path):
    folder = tmp_path / "attn_patterns" / "model"
    folder.mkdir(parents=True)
    # DuoAttention writes its gates with numpy's savetxt, tab-separated
    np.savetxt(folder / "full_attention_heads.tsv", GATES, delimiter="\t")
    return folder


def test_duo_attention_gates_load_per_kv_head_and_expand(duo):
    kv = load_duo_attention(duo / "full_attention_heads.tsv")
    assert kv.shape == (3, 2) and kv.dtype == torch.float64
    assert kv.tolist() == [[0.02, 0.95], [1.0, 0.1], [0.4, 0.0]]   # clipped to [0, 1]
    q = load_duo_attention(duo, n_heads=8)                           # the folder works too
    assert q.shape == (3, 8)
    assert q[1, :4].tolist() == [1.0] * 4 and q[0, 4:].tolist() == [0.95] * 4
    assert torch.equal(kv_heads(q, 2), kv) and torch.equal(kv_heads(q, 2, "mean"), kv)
    # masking its best heads takes whole KV groups, in position order among ties
    assert Mask.top(q, 5).heads == ((1, 0), (1, 1), (1, 2), (1, 3), (0, 4))
    with pytest.raises(UsageError, match="not a multiple"):
        load_duo_attention(duo, n_heads=7)


def test_duo_attention_bad_files(tmp_path):
    bad = tmp_path / "full_attention_heads.tsv"
    bad.write_text("1.0\t0.5\n0.3\n")
    with pytest.raises(UsageError, match="different numbers of KV heads"):
        load_duo_attention(bad)
    bad.write_text("1.0,0.5\n")
    with pytest.raises(UsageError, match="line 1: not tab-separated numbers"):
        load_duo_attention(bad)
    bad.write_text("nan\t0.5\n")
    with pytest.raises(UsageError, match="not a finite number"):
        load_duo_attention(bad)
    with pytest.raises(FileNotFoundError):
        load_duo_attention(tmp_path / "nothing.tsv")


def test_headkv_scores_load_as_query_head_means(tmp_path):
    path = tmp_path / "Llama_retrieval_reasoning_heads.json"
    data = {f"{l}-{h}": [0.0] for l in range(3) for h in range(8)}
    data.update({"2-5": [0.9, 1.1], "0-1": [0.5, 0.3], "1-7": [0.2, 0.0]})
    path.write_text(json.dumps(data))                 # one line, as HeadKV reads it
    m = load_headkv(path)
    assert m.shape == (3, 8) and float(m[2, 5]) == pytest.approx(1.0)
    assert top_heads(m, 3) == [(2, 5), (0, 1), (1, 7)]
    norm = load_headkv(path, normalize=True)
    assert float(norm.sum()) == pytest.approx(1.0) and top_heads(norm, 3) == top_heads(m, 3)
    path.write_text(json.dumps({"0-0": [0.1], "layer": [0.2]}))
    with pytest.raises(UsageError, match="is not 'layer-head'"):
        load_headkv(path)


def test_qrhead_lists_become_ranked_maps(tmp_path):
    as_json = tmp_path / "qr.json"
    as_json.write_text(json.dumps([[2, 5], "1-3", "L0H7"]))
    m = load_qrhead(as_json, shape=(3, 8))
    assert m[2, 5] == 1.0 and m[1, 3] == pytest.approx(2 / 3) and m[0, 7] == pytest.approx(1 / 3)
    assert int((m > 0).sum()) == 3
    assert Mask.top(m, 2).heads == ((2, 5), (1, 3))
    as_text = tmp_path / "qr.txt"
    as_text.write_text("# QRHead, best first\n2-5\n1-3  # second\nL0H7\n")
    assert torch.equal(load_qrhead(as_text, (3, 8)), m)
    assert torch.equal(load_map(as_text, "qrhead", shape=(3, 8)), m)
    for text, words in (('[[9, 0]]', "do not exist"), ('["2-5", "2-5"]', "listed twice"),
                        ('[[1, 2, 3]]', "neither"), ("[]", "lists no heads")):
        as_json.write_text(text)
        with pytest.raises(UsageError, match=words):
            load_qrhead(as_json, (3, 8))
    with pytest.raises(UsageError, match="shape is needed"):
        load_map(as_text, "qrhead")


def test_the_three_compare_with_each_other(duo, tmp_path):
    headkv = tmp_path / "headkv.json"
    scores = torch.zeros(3, 8, dtype=torch.float64)
    scores[0, 4:] = 0.8                                # agrees with the gates, group by group
    scores[1, :4] = 0.9
    scores[2, 1] = 0.3
    headkv.write_text(json.dumps({f"{l}-{h}": [float(scores[l, h])] for l in range(3)
                                  for h in range(8)}))
    qr = tmp_path / "qr.json"
    qr.write_text(json.dumps(["1-0", "1-1", "0-4"]))
    maps = {"duo": load_map(duo, "duoattention", n_heads=8), "headkv": load_map(headkv, "headkv"),
            "qrhead": load_map(qr, "qrhead", shape=(3, 8))}
    table = compare_scores(maps, k=4)
    row = table[(table.a == "duo") & (table.b == "headkv")].iloc[0]
    assert row.pearson > 0.8 and row.top4_overlap == 1.0
    # at KV-head level the query-head maps reduce to DuoAttention's resolution
    kv = {"duo": load_duo_attention(duo), "headkv": kv_heads(maps["headkv"], 2)}
    assert torch.allclose(kv["headkv"], torch.tensor([[0.0, 0.8], [0.9, 0.0], [0.3, 0.0]],
                                                     dtype=torch.float64), atol=1e-6)
    assert compare_scores(kv, k=2).top2_overlap[0] == 1.0
    assert same_family_test(maps["duo"], maps["headkv"], n_null=50).pearson > 0.8
    with pytest.raises(UsageError, match="format must be one of"):
        load_map(qr, "snapkv")


def test_expand_and_reduce_are_inverse_on_group_constant_maps():
    kv = torch.rand(4, 3, dtype=torch.float64)
    assert torch.equal(kv_heads(expand_kv(kv, 12), 3), kv)
    with pytest.raises(UsageError, match="reduce"):
        kv_heads(expand_kv(kv, 12), 3, "min")
