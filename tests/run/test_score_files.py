"""Score files as the commands read them: values, keys and ranges checked with one-line errors
that name the file; score files from URLs, fetched with a size cap, a deadline and no downgrade."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from rhlens.errors import FetchError, UsageError
from rhlens.run.results import fetch_text, load_scores, scores_to_json


@pytest.mark.parametrize("value, message", [
    ("null", "head '0-0' has null; scores must be numbers"),
    ('"a"', "head '0-0' has \"a\"; scores must be numbers"),
    ("[true]", "head '0-0' has true"),
    ("NaN", "NaN is not a score"),
    ("Infinity", "Infinity is not a score"),
    ("[-Infinity]", "-Infinity is not a score"),
    ("[1e400]", "non-finite score"),
    ("[-0.5]", "negative score (-0.5)"),
])
def test_score_file_values_are_checked(files, value, message, one_error):
    src = files / "bad.json"
    body = ", ".join(f'"{l}-{h}": [0.1]' for l in range(2) for h in range(2) if (l, h) != (0, 0))
    src.write_text('{"0-0": ' + value + ", " + body + "}")
    line = one_error("plot", src, "--out", files / "p.png")
    assert str(src) in line and message in line
    assert not (files / "p.png").exists()


@pytest.mark.parametrize("text, message", [
    ('{"0-0": [0.1], "1_0-0": [0.5]}', "key '1_0-0' is not 'layer-head'"),
    ('{"0-0": [0.7], "00-0": [0.1]}', "key '00-0' is not 'layer-head'"),
    ('{"0-0": [0.7], "0-0": [0.1]}', "key '0-0' appears twice"),
    ('{" 0-0": [0.7]}', "is not 'layer-head'"),
    ('{"1000000-1000000": [1]}', "1000001 layers x 1000001 heads but list only 1 of those"),
    ('{"0-0": [0.1], "1-1": [0.2]}', "'0-1' is missing"),
    ("[1, 2]", "holds no scores"),
    ("{", "is not JSON"),
])
def test_score_file_keys_are_checked(files, text, message, one_error):
    src = files / "keys.json"
    src.write_text(text)
    line = one_error("plot", src, "--out", files / "p.png")
    assert message in line and str(src) in line


def test_score_file_range_depends_on_its_mode(files, cli, one_error):
    """A paper-mode file lies in [0, 1]; a file of unknown mode (the paper's published files
    are sum-mode, up to ~1.8) only needs finite non-negative numbers."""
    data = {f"{l}-{h}": [0, 0.25, 1.8] if (l, h) == (1, 1) else [0, 0, 0]
            for l in range(2) for h in range(4)}
    published = files / "Published-7B.json"
    published.write_text(json.dumps(data))
    assert cli("plot", published, "--out", files / "pub.png")[0] == 0
    assert load_scores(published)[1, 1] == pytest.approx(2.05 / 3)
    ours = files / "ours.json"
    ours.write_text(json.dumps(data))
    Path(f"{ours}.samples.jsonl").write_text(json.dumps({"settings": {"mode": "paper"}}) + "\n")
    assert "above 1, but a paper-mode score lies in [0, 1]" in one_error("plot", ours, "--out", files / "ours.png")
    Path(f"{ours}.samples.jsonl").write_text(json.dumps({"settings": {"mode": "sum"}}) + "\n")
    assert cli("plot", ours, "--out", files / "ours.png")[0] == 0


def test_score_file_of_another_shape_fails_before_the_model_loads(files, no_model, one_error, niah_args):
    big = files / "smollm2.json"
    big.write_text(json.dumps(scores_to_json([torch.zeros(30, 9)], 30, 9)))
    line = one_error(*niah_args(files, files / "s.csv", "--scores", big, "--mask-top", "1"))
    assert "scores 30 x 9 heads, but the model has 2 x 4" in line


def test_a_directory_as_score_file(files, one_error, snapshot):
    (files / "sdir").mkdir()
    assert "is a folder" in one_error("plot", files / "sdir", "--out", files / "p.png")
    before = snapshot(files / "scores.json")
    line = one_error("plot", files / "scores.json", "--out", files / "scores.json")
    assert line.startswith("rhlens plot: error: --out") and "would overwrite the score file" in line
    assert snapshot(files / "scores.json") == before


@pytest.fixture
def server(files):
    """An HTTP server on 127.0.0.1 serving ``files``."""
    handler = type("Quiet", (http.server.SimpleHTTPRequestHandler,),
                   {"log_message": lambda *a, **k: None})
    srv = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a, **k: handler(*a, directory=str(files), **k))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_score_url_errors(files, server, cli, one_error):
    line = one_error("plot", f"{server}/missing.json", "--out", files / "p.png")
    assert "answered HTTP 404" in line  # a wrong address: usage error
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    line = one_error("plot", f"http://127.0.0.1:{port}/s.json", "--out",
                     files / "p.png", code=1)
    assert "Cannot fetch" in line and "refused" in line.lower()
    with pytest.raises(OSError):  # what the book's offline cells catch
        load_scores(f"http://127.0.0.1:{port}/s.json")
    (files / "nan.json").write_text('{"0-0": [NaN]}')  # fetched files are checked too
    assert "NaN is not a score" in one_error("plot", f"{server}/nan.json", "--out",
                                             files / "p.png")
    assert cli("plot", f"{server}/scores.json", "--out", files / "p.png")[0] == 0


def test_fetch_has_a_size_cap_a_deadline_and_no_downgrade(files, server):
    (files / "big.json").write_text("[" + "0," * 500 + "0]")
    with pytest.raises(UsageError, match="limit of a score file"):
        fetch_text(f"{server}/big.json", max_bytes=100)
    with pytest.raises(UsageError, match="only https"):
        fetch_text("ftp://127.0.0.1/x.json")

    listener = socket.create_server(("127.0.0.1", 0))

    def drip():  # headers, then one byte every 0.2 s: never finishes within the deadline
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 1000\r\n\r\n")
            for _ in range(40):
                try:
                    conn.sendall(b" ")
                except OSError:
                    return
                time.sleep(0.2)

    threading.Thread(target=drip, daemon=True).start()
    start = time.monotonic()
    with pytest.raises(FetchError, match="longer than 1 s"):
        fetch_text(f"http://127.0.0.1:{listener.getsockname()[1]}/slow.json", timeout=1.0)
    assert time.monotonic() - start < 5
    listener.close()

    import urllib.request

    from rhlens.run.results import _NoDowngrade

    req = urllib.request.Request("https://example.org/s.json")
    with pytest.raises(UsageError, match="may only redirect to https"):
        _NoDowngrade().redirect_request(req, None, 302, "Found", {}, "http://example.org/s.json")


@pytest.mark.parametrize("text, message", [
    ('{"0-0": [1%s], "0-1": [0]}' % ("0" * 400), "non-finite score (inf)"),
    ('{"0-0": [1%s], "0-1": [0]}' % ("0" * 5000), "non-finite score (inf)"),
    ('{"0-0": [1e308, 1e308], "0-1": [0]}', "beyond what a score map holds"),
    ('{"0-0": [1e39], "0-1": [0]}', "beyond what a score map holds"),
    ('{"1%s-0": [0]}' % ("0" * 5000), "is not 'layer-head'"),
])
def test_numbers_that_overflow_are_one_line_naming_the_file(files, one_error, text, message):
    """Huge numbers in a score file: one line naming the file, not an internal OverflowError,
    Python's digit-limit message, or a map that quietly holds inf."""
    bad = files / "huge.json"
    bad.write_text(text)
    line = one_error("plot", bad, "--out", files / "p.png")
    assert f"{bad}" in line and message in line
    assert not (files / "p.png").exists()


def test_huge_python_ints_in_a_score_dict():
    with pytest.raises(UsageError, match="non-finite score \\(a 401-digit number\\)"):
        load_scores({"0-0": [10**400]})
    with pytest.raises(UsageError, match="'0-0' scores 1.5e\\+308 on average"):
        load_scores({"0-0": [1.5e308, 1.5e308]})  # the sum overflows, the mean does not


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/s.json",
                                    "data:text/plain,{}"])
def test_a_refused_redirect_is_a_usage_error_not_try_again_later(files, one_error, target):
    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(302)
            self.send_header("Location", target)
            self.end_headers()

        def log_message(self, *a, **k):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        line = one_error("plot", f"http://127.0.0.1:{srv.server_address[1]}/s.json", "--out",
                         files / "p.png")
    finally:
        srv.shutdown()
        srv.server_close()
    assert target in line and "download the file" in line and "try again" not in line
