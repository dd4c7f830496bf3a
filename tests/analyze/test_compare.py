"""Score-map comparison on synthetic score files (the published files' format)."""

from __future__ import annotations

import functools
import http.server
import json
import threading

import pytest
import torch

from rhlens.analyze.compare import (
    compare_scores,
    correlation_matrix,
    family_table,
    same_family_test,
    sparsity_table,
)
from rhlens.analyze.statistics import pearson, spearman, top_k_overlap
from rhlens.run.results import scores_to_json
from rhlens.score.heads import sparsity, top_heads
from rhlens.viz.plots import side_by_side


def sparse_map(seed: int, n_layers=32, n_heads=32, share=0.05) -> torch.Tensor:
    """A paper-like map: ~5% of heads score, most are exactly 0."""
    g = torch.Generator().manual_seed(seed)
    m = torch.zeros(n_layers, n_heads)
    idx = torch.randperm(n_layers * n_heads, generator=g)[: int(share * n_layers * n_heads)]
    m.view(-1)[idx] = torch.rand(len(idx), generator=g) * 0.9 + 0.05
    return m


def write_file(path, mean_map, n_samples=3, seed=0):
    """Per-sample lists whose mean is ``mean_map`` (a published-style score file)."""
    g = torch.Generator().manual_seed(seed)
    noise = [torch.randn(mean_map.shape, generator=g) * 0.02 for _ in range(n_samples - 1)]
    noise.append(-sum(noise))
    samples = [(mean_map + e) * (mean_map > 0) for e in noise]
    path.write_text(json.dumps(scores_to_json(samples, *mean_map.shape)))
    return path


@pytest.fixture
def family(tmp_path):
    base = sparse_map(0)
    g = torch.Generator().manual_seed(1)
    chat = (base * (0.8 + 0.4 * torch.rand(base.shape, generator=g))).clamp(0, 1)
    other = sparse_map(7)
    return (write_file(tmp_path / "base.json", base), write_file(tmp_path / "chat.json", chat),
            write_file(tmp_path / "other.json", other), base, chat, other)


def test_metrics_on_files(family):
    base_f, chat_f, other_f, base, chat, other = family
    assert pearson(base_f, base_f) == pytest.approx(1.0)
    assert pearson(base_f, chat_f) > 0.9
    assert abs(pearson(base_f, other_f)) < 0.2
    assert spearman(base_f, chat_f) > spearman(base_f, other_f)
    assert top_k_overlap(base_f, base_f, 20) == 1.0
    assert top_k_overlap(base_f, other_f, 20) < 0.3
    assert top_heads(base, 1)[0] == divmod(int(base.argmax()), 32)


def test_pearson_matches_numpy():
    import numpy as np

    a, b = torch.rand(6, 5), torch.rand(6, 5)
    assert pearson(a, b) == pytest.approx(float(np.corrcoef(a.flatten(), b.flatten())[0, 1]))
    assert pearson(a, a * 3 + 1) == pytest.approx(1.0)
    assert pearson(torch.zeros(3, 3), a[:3, :3]) != pearson(torch.zeros(3, 3), a[:3, :3])  # NaN


def test_spearman_handles_ties():
    a = torch.tensor([[0.0, 0.0, 0.0, 0.5, 0.9, 0.2]])
    b = torch.tensor([[0.0, 0.0, 0.0, 0.6, 1.0, 0.3]])
    assert spearman(a, b) == pytest.approx(1.0)
    assert spearman(a, -b) == pytest.approx(-1.0)


def test_same_family_verdicts(family):
    base_f, chat_f, other_f, *_ = family
    same = same_family_test(base_f, chat_f)
    assert same.verdict == "same family" and same.p_value < 0.01
    assert "Pearson r" in str(same)
    diff = same_family_test(base_f, other_f)
    assert diff.verdict == "different families"
    assert diff.null_p95 < 0.2


def test_same_family_errors(family, tmp_path):
    base_f = family[0]
    small = write_file(tmp_path / "small.json", sparse_map(0, 4, 4, share=0.5))
    with pytest.raises(ValueError, match="different shapes"):
        same_family_test(base_f, small)
    with pytest.raises(ValueError, match="constant"):
        same_family_test(torch.zeros(32, 32), base_f)
    with pytest.raises(ValueError, match="k must be"):
        top_k_overlap(base_f, base_f, 0)


def test_load_from_url(family):
    base_f, chat_f = family[0], family[1]
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(base_f.parent))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{chat_f.name}"
        assert pearson(base_f, url) == pytest.approx(pearson(base_f, chat_f))
    finally:
        server.shutdown()


def test_tables_and_figure(family):
    base_f, chat_f, other_f, base, *_ = family
    table = compare_scores({"base": base_f, "chat": chat_f, "other": other_f,
                            "tiny": torch.rand(2, 2)}, k=10)
    assert len(table) == 6
    row = table[(table.a == "base") & (table.b == "chat")].iloc[0]
    assert row.pearson > 0.9 and row.top10_overlap > 0.5
    assert table[table.b == "tiny"].pearson.isna().all()
    s = sparsity(base)
    assert s["share_above_0.1"] == pytest.approx(float((base > 0.1).float().mean()))
    assert s["share_zero"] > 0.9
    st = sparsity_table({"file": base_f, "mine": base})
    assert st.loc[1, "share_above_0.1"] == pytest.approx(s["share_above_0.1"])
    assert st.loc[1, "heads > 0.1"] == int((base > 0.1).sum())
    assert st.loc[1, "top head"] == "L{}H{}".format(*top_heads(base, 1)[0])
    assert st.loc[0, "layers x heads"] == "32 x 32"
    fig = side_by_side({"base": base_f, "chat": chat_f})
    assert len([a for a in fig.axes if a.get_title()]) == 2
    fig = side_by_side({"base": base_f, "chat": chat_f, "other": other_f}, ncols=2)
    assert len([a for a in fig.axes if a.get_title()]) == 3


def test_correlation_matrix_and_family_table(family):
    base_f, chat_f, other_f, *_ = family
    maps = {"base": base_f, "chat": chat_f, "other": other_f, "tiny": torch.rand(2, 2)}
    r = correlation_matrix(maps)
    assert list(r.index) == list(r.columns) == list(maps)
    assert r.loc["base", "base"] == pytest.approx(1.0)
    assert r.loc["base", "chat"] == r.loc["chat", "base"] == pytest.approx(pearson(base_f, chat_f))
    assert r.loc["base", "tiny"] != r.loc["base", "tiny"]  # NaN: shapes differ
    rho = correlation_matrix(maps, method="spearman")
    assert rho.loc["base", "other"] == pytest.approx(spearman(base_f, other_f))
    with pytest.raises(ValueError, match="pearson"):
        correlation_matrix(maps, method="kendall")
    fams = {"base": "a", "chat": "a", "other": "b", "tiny": "a"}
    t = family_table(maps, fams, n_null=200).set_index(["a", "b"])
    assert t.loc[("base", "chat"), "verdict"] == "same family"
    assert t.loc[("base", "chat"), "expected"] == "r > 0.8"
    assert t.loc[("base", "other"), "verdict"] == "different families"
    assert t.loc[("base", "tiny"), "verdict"].startswith("not comparable: 32x32 vs 2x2")
