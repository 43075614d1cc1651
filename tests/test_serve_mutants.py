"""serve.py as its user meets it (issue 25, the survivors of a mutmut run): the --help text,
the options' defaults and limits, the lines printed at start (the address, a warning when other
machines can reach the page, errors with exit status 2), request logging and --quiet, HEAD
requests, and the server's pieces (make_server's defaults, load_assets, DigitMap's JSON).

``serve.main`` runs in a thread; the server it makes is caught on its way out of
``make_server`` (the real one), asked a question over HTTP, and shut down, so main returns.
"""
from __future__ import annotations

import http.client
import io
import json
import socket
import sys
import threading
import time
from contextlib import redirect_stderr

import numpy as np
import pytest

import graphnet as gn
from graphnet import nn

from examples.mnist import serve
from helpers import help_lines


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve-mutants") / "model.npz"
    with gn.use_backend("numpy"):
        gn.seed(0)
        nn.Classifier(nn.MLP([16, 10], 784, "tanh"), (784,)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def digit_map(model_path):
    with gn.use_backend("numpy"):
        return serve.build_map(nn.load(model_path), n=50)


class Main:
    """``serve.main(args)`` in a thread; ``server``: the server it made (None if it made none)."""

    def __init__(self, monkeypatch, args: list[str], stdout=None) -> None:
        self.made = []
        real = serve.make_server

        def caught(*a, **k):
            server = real(*a, **k)
            self.made.append(server)
            return server
        monkeypatch.setattr(serve, "make_server", caught)
        if stdout is not None:
            monkeypatch.setattr(sys, "stdout", stdout)
        self.result: dict = {}
        self.thread = threading.Thread(
            target=lambda: self.result.setdefault("code", serve.main(args)), daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.made and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        self.server = self.made[0] if self.made else None

    def get(self, path: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
        time.sleep(0.05)
        assert self.thread.is_alive(), "serve.main ended without serving"
        conn = http.client.HTTPConnection(host, self.server.server_address[1], timeout=10)
        try:
            conn.request("GET", path)
            res = conn.getresponse()
            return res.status, res.read()
        finally:
            conn.close()

    def stop(self) -> int:
        if self.server is not None and self.thread.is_alive():
            self.server.shutdown()  # (waits for serve_forever: only while main runs)
        elif self.server is not None:
            self.server.server_close()
        self.thread.join(30)
        assert "code" in self.result, "serve.main did not return"
        return self.result["code"]


def _help(monkeypatch, capsys) -> list[str]:
    return help_lines(serve.main, "serve.py", monkeypatch, capsys)


def test_help_names_every_option_and_keeps_the_description_as_written(monkeypatch, capsys):
    lines = _help(monkeypatch, capsys)
    assert lines[0] == ("usage: serve.py [-h] --model MODEL [--host HOST] [--port PORT] "
                        "[--backend {numpy,cupy}] [--data DATA] [--quiet]")
    for line in ["A local web page: draw a digit, watch the model's ten probabilities and where "
                 "the digit",
                 "    python examples/mnist/serve.py --model runs/fast/model.npz          "
                 "# http://127.0.0.1:8000/",
                 "answer with a message and the server keeps serving."]:
        assert line in lines, line
    options = [" ".join(ln.split()) for ln in lines[lines.index("options:"):]]
    for line in ["--model MODEL a model.npz written by train.py (or its folder)",
                 "--host HOST address to listen on (default 127.0.0.1: this machine only)",
                 "--port PORT port (default 8000; 0 picks a free one)",
                 "--backend {numpy,cupy}",
                 "where the model runs (default: GRAPHNET_BACKEND or numpy)",
                 "--data DATA folder with the MNIST IDX files (default: the cache)",
                 "--quiet do not log each request"]:
        assert line in options, (line, options)


def test_model_is_a_required_option(capsys):
    with pytest.raises(SystemExit) as stop:
        serve.main(["--port", "0"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        "error: the following arguments are required: --model")


@pytest.mark.parametrize("port", ["65536", "-1"])
def test_a_port_outside_0_to_65535_is_an_option_error(model_path, capsys, port):
    with pytest.raises(SystemExit) as stop:
        serve.main(["--model", model_path, "--port", port])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        f"error: --port must be in 0..65535, got {port}")


def _hold(port: int) -> socket.socket | None:
    """Listen on 127.0.0.1:port (None if something else already does)."""
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        s.listen()
    except OSError:
        s.close()
        return None
    return s


@pytest.mark.parametrize("args, port", [([], 8000), (["--port", "65535"], 65535)])
def test_a_port_in_use_is_one_error_line_and_exit_2(model_path, monkeypatch, capsys, args,
                                                     port):
    """The default port is 8000 and 65535 is a port: both are tried, and taken (here by the
    test) they give one line naming the address and the system's reason."""
    real = serve.make_server

    def must_fail(*a, **k):
        real(*a, **k).server_close()
        raise AssertionError(f"listening, not refused: make_server{a}")
    monkeypatch.setattr(serve, "make_server", must_fail)
    held = _hold(port)
    try:
        assert serve.main(["--model", model_path, "--quiet", *args]) == 2
    finally:
        if held is not None:
            held.close()
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"error: cannot listen on 127.0.0.1:{port}: Address already in use\n"


def test_serving_prints_its_address_at_once_answers_and_stops_with_0(model_path, monkeypatch,
                                                                    capsys):
    """``--port 0 --quiet``: the "serving" line reaches a pipe while the server runs (a script
    waiting for it sees it), the page answers, nothing is logged, and main returns 0."""
    pipe = io.BytesIO()
    out = io.TextIOWrapper(pipe, encoding="utf-8")
    running = Main(monkeypatch, ["--model", model_path, "--port", "0", "--quiet",
                                 "--backend", "numpy"], stdout=out)
    assert running.server is not None, capsys.readouterr().err
    port = running.server.server_address[1]
    assert port != 0
    try:
        assert pipe.getvalue().decode() == \
            f"serving {model_path} on http://127.0.0.1:{port}/ (Ctrl-C stops)\n"
        status, body = running.get("/api/map")
        assert status == 200 and len(json.loads(body)["points"]) == serve.N_MAP
    finally:
        code = running.stop()
    assert code == 0
    assert capsys.readouterr().err == ""


def test_listening_on_every_address_warns_and_logs_each_request(model_path, monkeypatch, capsys):
    running = Main(monkeypatch, ["--model", model_path, "--host", "0.0.0.0", "--port", "0"])
    assert running.server is not None, capsys.readouterr().err
    port = running.server.server_address[1]
    try:
        assert running.get("/api/map")[0] == 200
    finally:
        code = running.stop()
    assert code == 0
    out, err = capsys.readouterr()
    assert out == f"serving {model_path} on http://0.0.0.0:{port}/ (Ctrl-C stops)\n"
    lines = err.splitlines()
    assert lines[0] == "warning: listening on 0.0.0.0: other machines can reach this page"
    assert len(lines) == 2 and '"GET /api/map HTTP/1.1" 200' in lines[1]


def test_an_ipv6_address_is_printed_in_brackets(model_path, monkeypatch, capsys):
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"cannot listen on ::1 here: {exc}")
    running = Main(monkeypatch, ["--model", model_path, "--host", "::1", "--port", "0", "--quiet"])
    assert running.server is not None, capsys.readouterr().err
    port = running.server.server_address[1]
    try:
        assert running.get("/api/map", host="::1")[0] == 200
    finally:
        code = running.stop()
    assert code == 0
    out, err = capsys.readouterr()
    assert out == f"serving {model_path} on http://[::1]:{port}/ (Ctrl-C stops)\n" and err == ""


def _never_serve(monkeypatch) -> None:
    def refuse(*a, **k):
        raise AssertionError("main went on to serve")
    monkeypatch.setattr(serve, "make_server", refuse)


@pytest.mark.parametrize("failure, line", [
    (serve.mnist.MNISTError("no MNIST here (test)"), "error: no MNIST here (test)"),
    (OSError(28, "No space left on device"),
     "error: cannot read the MNIST test images: [Errno 28] No space left on device"),
])
def test_data_that_cannot_be_read_is_one_error_line_and_exit_2(model_path, tmp_path, monkeypatch,
                                                               capsys, failure, line):
    """--data names an empty folder: MNIST is read from there (fetched into it), not from the
    cache; a failure is one line on stderr and exit status 2."""
    asked = []

    def fetch(root, *a, **k):
        asked.append(str(root))
        raise failure
    monkeypatch.setattr(serve.mnist, "fetch", fetch)
    _never_serve(monkeypatch)
    assert serve.main(["--model", model_path, "--data", str(tmp_path), "--port", "0"]) == 2
    assert asked == [str(tmp_path)]
    out, err = capsys.readouterr()
    assert out == "" and err == line + "\n"


def test_a_missing_model_or_backend_is_one_error_line_and_exit_2(tmp_path, model_path,
                                                                 monkeypatch, capsys):
    _never_serve(monkeypatch)
    missing = tmp_path / "none.npz"
    assert serve.main(["--model", str(missing), "--port", "0"]) == 2
    assert capsys.readouterr().err == \
        f"error: {missing} does not exist (train a model with examples/mnist/train.py)\n"
    if "cupy" in gn.available_backends():
        return  # the rest needs a machine without CuPy
    assert serve.main(["--model", model_path, "--backend", "cupy", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "cupy" in err.lower() and len(err.splitlines()) == 1


# --- the server's pieces ------------------------------------------------------------------------
def _serving(server):
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


def _stop(server, thread) -> None:
    server.shutdown()
    server.server_close()
    thread.join(10)


def _raw(server, request: bytes) -> bytes:
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=20) as sock:
        sock.sendall(request.replace(b"{HOST}", f"{host}:{port}".encode()))
        return b"".join(iter(lambda: sock.recv(65536), b""))


def test_head_answers_the_headers_of_get_without_the_body(digit_map):
    server = serve.make_server(digit_map, "127.0.0.1", 0, quiet=True)
    thread = _serving(server)
    try:
        page = serve.load_assets()["index.html"][0]
        reply = _raw(server, b"HEAD / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n")
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.split(b" ", 2)[1] == b"200" and body == b""
        lines = [ln.lower() for ln in head.split(b"\r\n")]  # (HTTP ignores the names' case)
        assert f"content-length: {len(page)}".encode() in lines
        assert b"content-type: text/html; charset=utf-8" in lines
    finally:
        _stop(server, thread)


def test_make_server_listens_on_this_machine_and_logs_by_default(digit_map, capfd):
    server = serve.make_server(digit_map, port=0)
    thread = _serving(server)
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        conn = http.client.HTTPConnection(host, port, timeout=20)
        conn.request("GET", "/api/map")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        _stop(server, thread)
    assert '"GET /api/map HTTP/1.1" 200' in capfd.readouterr().err


def test_make_server_default_port_is_8000(digit_map):
    held = _hold(8000)
    try:
        with pytest.raises(OSError) as err:
            serve.make_server(digit_map).server_close()
        assert err.value.errno == 98  # EADDRINUSE: it asked for 8000
    finally:
        if held is not None:
            held.close()


def test_a_quiet_server_logs_neither_requests_nor_clients_that_go_away(digit_map, capfd):
    server = serve.make_server(digit_map, "127.0.0.1", 0, quiet=True)
    thread = _serving(server)
    try:
        host, port = server.server_address[:2]
        conn = http.client.HTTPConnection(host, port, timeout=20)
        conn.request("GET", "/api/map")
        assert conn.getresponse().status == 200
        conn.close()
        try:
            raise ConnectionResetError(104, "reset")
        except OSError:
            server.handle_error(None, ("127.0.0.1", 5555))
    finally:
        _stop(server, thread)
    assert capfd.readouterr().err == ""


def test_a_real_fault_is_a_traceback_naming_the_client(digit_map):
    server = serve.make_server(digit_map, "127.0.0.1", 0, quiet=True)
    err = io.StringIO()
    try:
        with redirect_stderr(err):
            try:
                raise RuntimeError("a real fault")
            except RuntimeError:
                server.handle_error(None, ("127.0.0.1", 5555))
    finally:
        server.server_close()
    text = err.getvalue()
    assert "Exception occurred during processing of request from ('127.0.0.1', 5555)" in text
    assert "RuntimeError: a real fault" in text


def test_load_assets_takes_only_files_of_known_kinds(tmp_path):
    (tmp_path / "index.html").write_text("<p>hi</p>")
    (tmp_path / "notes.txt").write_text("not served")
    (tmp_path / "sub.css").mkdir()  # a folder, even named like a style sheet
    assert serve.load_assets(tmp_path) == {"index.html": (b"<p>hi</p>", "text/html; charset=utf-8")}


def test_the_map_and_answers_give_labels_and_pixels_as_integers(model_path):
    """DigitMap given lists of floats (not uint8 arrays): the JSON still holds integers."""
    with gn.use_backend("numpy"):
        model = nn.load(model_path)
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (12, 28, 28)).astype(np.float64).tolist()
        labels = [float(i % 10) for i in range(12)]
        dm = serve.DigitMap(model, images, labels)
        answer = dm.predict(np.kron(np.eye(4), np.ones((10, 10))) * 255)
    text = serve._json_bytes(dm.map_json()).decode()
    assert '"labels":[0,1,2,3,4,5,6,7,8,9,0,1]' in text
    pixels = json.loads(serve._json_bytes(answer))["neighbours"][0]["pixels"]
    assert len(pixels) == 784 and all(type(v) is int for v in pixels)


def _reply(server, request: bytes) -> tuple[str, dict, bytes]:
    """Status line, headers (names in lower case: HTTP ignores their case) and body of the
    one answer to raw ``request``."""
    reply = _raw(server, request)
    head, _, body = reply.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    return status, {k.lower(): v for k, v in (ln.split(": ", 1) for ln in lines)}, body


def test_http_servers_own_refusals_are_json_and_close_the_connection(digit_map):
    """An unknown method: 405 with the methods allowed, a JSON message, its length, and the
    connection closed (a second request sent behind it gets no answer). A request line that
    cannot be parsed: 400, no Allow. A HEAD refused: the headers only."""
    server = serve.make_server(digit_map, "127.0.0.1", 0, quiet=True)
    thread = _serving(server)
    try:
        reply = _raw(server, b"BREW / HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
                             b"GET /api/map HTTP/1.1\r\nHost: {HOST}\r\n\r\n")
        assert reply.count(b"HTTP/1.") == 1, reply[:300]
        status, headers, body = _reply(server, b"BREW / HTTP/1.1\r\nHost: {HOST}\r\n\r\n")
        assert status.split(" ", 1)[1] == "405 Method Not Allowed"
        assert json.loads(body) == {"error": "BREW is not supported"}
        assert headers["content-type"].lower() == "application/json"  # (media types too)
        assert headers["content-length"] == str(len(body))
        assert headers["connection"] == "close" and headers["allow"] == "GET, HEAD, POST"
        status, headers, body = _reply(server, b"GET / HTTP/1.1 extra words\r\n\r\n")
        assert status.split(" ", 2)[1] == "400" and "allow" not in headers
        assert json.loads(body)["error"].startswith("Bad request")
        assert headers["content-length"] == str(len(body)) and headers["connection"] == "close"
        long_header = b"HEAD / HTTP/1.1\r\nHost: {HOST}\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n"
        status, headers, body = _reply(server, long_header)
        assert status.split(" ", 2)[1] == "431" and body == b""
        assert int(headers["content-length"]) > 0  # the length GET would have had
    finally:
        _stop(server, thread)


def _overflowing(path) -> str:
    from test_predict_doors import model_file
    return str(model_file(path, overflow=True))


def test_what_the_map_and_a_drawing_answer_hold(digit_map, tmp_path):
    """The map's points to 4 decimals; a neighbour's keys; a blank drawing (422) and
    probabilities that overflow (500) named as the client reads them."""
    points = np.array(digit_map.map_json()["points"])
    assert np.abs(points * 1e4 - np.round(points * 1e4)).max() < 1e-6
    assert np.abs(points - digit_map.projection.points).max() > 1e-7  # rounded indeed
    with gn.use_backend("numpy"):
        answer = digit_map.predict(np.kron(np.eye(4), np.ones((10, 10))) * 255)
        assert set(answer["neighbours"][0]) == {"index", "label", "pixels"}
        assert answer["neighbours"][0]["label"] == int(digit_map.labels[answer["neighbours"][0]
                                                                        ["index"]])
        with pytest.raises(serve.RequestError) as err:
            digit_map.predict(np.zeros((30, 30)))
        assert err.value.status == 422 and err.value.message.startswith("the drawing: is blank")
        hot = serve.DigitMap(nn.load(_overflowing(tmp_path / "hot.npz")), digit_map.images[:3],
                             digit_map.labels[:3])
        with pytest.raises(serve.RequestError) as err:
            hot.predict(np.kron(np.eye(4), np.ones((10, 10))) * 255)
    assert err.value.status == 500
    assert err.value.message == ("the model's probabilities hold NaN or inf: its weights "
                                 "overflow on this drawing")


def test_a_network_without_hidden_layer_says_why_it_has_no_map(tmp_path):
    path = tmp_path / "m.npz"
    with gn.use_backend("numpy"):
        gn.seed(0)
        nn.Classifier(nn.MLP([10], 784, "tanh"), (784,)).save(path)
        dm = serve.DigitMap(nn.load(path), np.zeros((3, 28, 28), np.uint8), np.arange(3))
    assert dm.map_json() == {"available": False, "reason": "this network has no hidden layer"}


def test_equally_near_test_images_are_listed_by_index(model_path):
    """Test images that are the drawing itself, scattered among others: all at distance 0,
    the eight shown are the first eight of them."""
    rng = np.random.default_rng(0)
    drawing = np.kron(np.eye(4), np.ones((10, 10))) * 255
    other = rng.integers(0, 256, (28, 28))
    same = rng.integers(0, 2, 60).astype(bool)
    images = np.where(same[:, None, None], serve.digits.to_mnist(drawing), other)
    with gn.use_backend("numpy"):
        answer = serve.DigitMap(nn.load(model_path), images, same).predict(drawing)
    assert [n["index"] for n in answer["neighbours"]] == [int(i) for i in np.flatnonzero(same)[:8]]


def test_paths_with_queries_and_methods_per_path(digit_map):
    server = serve.make_server(digit_map, "127.0.0.1", 0, quiet=True)
    thread = _serving(server)
    host, port = server.server_address[:2]

    def ask(method: str, path: str) -> tuple[int, dict]:
        conn = http.client.HTTPConnection(host, port, timeout=20)
        try:
            conn.request(method, path, body=b"{}" if method == "POST" else None,
                         headers={"Content-Type": "application/json"})
            res = conn.getresponse()
            body = res.read()
            return res.status, json.loads(body) if res.getheader("Content-Type").lower() == \
                "application/json" else {}
        finally:
            conn.close()
    try:
        assert ask("GET", "/api/map?x=1")[0] == 200
        assert ask("GET", "/api/map?a?b")[0] == 200
        assert ask("GET", "/static/app.js?v=2")[0] == 200
        assert ask("GET", "/1234567app.js")[0] == 404  # as long as "/static/", but not it
        assert ask("GET", "/api/predict") == (405, {"error": "use POST for /api/predict"})
        assert ask("POST", "/api/predict?x=1?y")[0] == 422  # reached: "{}" has no drawing
        for path in ("/api/map", "/static/app.js", "/", "/api/map?x"):
            status, answer = ask("POST", path)
            assert status == 405, path
            assert answer == {"error": f"cannot POST to {path.split('?')[0]}; POST drawings "
                                       "to /api/predict"}
        assert ask("POST", "/static/nope.js")[0] == 404
    finally:
        _stop(server, thread)


def test_answers_carry_no_store_allow_where_refused_and_close_where_the_request_was_bad(
        digit_map, monkeypatch):
    server = serve.make_server(digit_map, "127.0.0.1", 0, quiet=True)
    thread = _serving(server)
    host, port = server.server_address[:2]
    try:
        status, headers, body = _reply(server, b"GET /api/predict HTTP/1.1\r\nHost: {HOST}\r\n"
                                               b"Connection: close\r\n\r\n")
        assert status.split(" ", 2)[1] == "405" and headers["allow"] == "GET, HEAD, POST"
        assert headers["cache-control"] == "no-store"
        assert headers["content-type"].lower() == "application/json"
        assert json.loads(body) == {"error": "use POST for /api/predict"}
        status, headers, _ = _reply(server, b"GET /nope HTTP/1.1\r\nHost: {HOST}\r\n"
                                            b"Connection: close\r\n\r\n")
        assert status.split(" ", 2)[1] == "404" and "allow" not in headers
        assert headers["cache-control"] == "no-store"
        status, headers, body = _reply(server, b"GET / HTTP/1.1\r\nHost: evil.example:" +
                                       str(port).encode() + b"\r\n\r\n")
        assert status.split(" ", 2)[1] == "421" and headers["connection"] == "close"
        assert json.loads(body) == {"error": f"Host 'evil.example:{port}' does not name this "
                                             f"server; use http://127.0.0.1:{port}/"}
        status, headers, body = _reply(server, b"GET / HTTP/1.1\r\n\r\n")
        assert status.split(" ", 2)[1] == "400" and headers["connection"] == "close"
        assert json.loads(body) == {"error": "expected one Host header, got 0"}

        def broken(grey):
            raise RuntimeError("boom")
        monkeypatch.setattr(digit_map, "predict", broken)
        with redirect_stderr(io.StringIO()) as err:  # the traceback goes to the log
            status, headers, body = _reply(
                server, b"POST /api/predict HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: "
                        b"application/json\r\nContent-Length: 24\r\nConnection: close\r\n\r\n"
                        b'{"pixels": [[0, 255]]}  ')
        assert status.split(" ", 2)[1] == "500"
        assert headers["content-type"].lower() == "application/json"
        assert json.loads(body) == {"error": "internal error: RuntimeError: boom"}
    finally:
        monkeypatch.undo()
        _stop(server, thread)


def test_a_server_on_every_address_answers_the_address_the_client_reached(digit_map):
    """Bound to 0.0.0.0 and reached at 127.0.0.2 (another loopback address): a Host naming
    the address reached is this server; another is not."""
    server = serve.make_server(digit_map, "0.0.0.0", 0, quiet=True)
    thread = _serving(server)
    port = server.server_address[1]
    try:
        def status(host: str) -> int:
            with socket.create_connection(("127.0.0.2", port), timeout=20) as sock:
                sock.sendall(f"GET /api/map HTTP/1.1\r\nHost: {host}:{port}\r\n"
                             "Connection: close\r\n\r\n".encode())
                reply = b"".join(iter(lambda: sock.recv(65536), b""))
            return int(reply.split(b" ", 2)[1])
        try:
            reached = status("127.0.0.2")
        except OSError as exc:
            pytest.skip(f"127.0.0.2 cannot be reached here: {exc}")
        assert reached == 200
        assert status("127.0.0.3") == 421
    finally:
        _stop(server, thread)
