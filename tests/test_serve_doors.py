"""serve.py as a hostile client meets it: stalled bodies, forged headers, foreign Host names,
huge numbers, bursts of clients, clients that hang up. Loopback only, every loop bounded."""
from __future__ import annotations

import io
import json
import socket
import threading
import time
from contextlib import redirect_stderr

import pytest

import graphnet as gn
from graphnet import nn

from examples.mnist import http_checks, serve
from test_serve import Running, digit_pixels


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve-doors") / "model.npz"
    with gn.use_backend("numpy"):
        gn.seed(0)
        nn.Classifier(nn.MLP([16, 10], 784, "tanh"), (784,)).save(path)
    running = Running(path, timeout=2)
    yield running
    running.close()


def raw(s: Running, request: bytes, seconds: float = 20) -> tuple[int, dict]:
    """Send raw bytes (``{HOST}`` becomes host:port), read the answer until the server closes."""
    with socket.create_connection((s.host, s.port), timeout=seconds) as sock:
        sock.sendall(request.replace(b"{HOST}", f"{s.host}:{s.port}".encode()))
        reply = b"".join(iter(lambda: sock.recv(4096), b"")).decode("latin-1")
    head, _, body = reply.partition("\r\n\r\n")
    return int(head.split(" ")[1]), json.loads(body) if body else {}


def post(headers: str, body: bytes = b"") -> bytes:
    return (b"POST /api/predict HTTP/1.1\r\nHost: {HOST}\r\n" + headers.encode() +
            b"Content-Type: application/json\r\n\r\n" + body)


def test_a_huge_body_announced_and_never_sent_gets_408(server):
    start = time.monotonic()
    status, answer = raw(server, post("Content-Length: 100000000\r\n", b"{"))
    assert status == 408 and "did not arrive in time" in answer["error"]
    assert time.monotonic() - start < 15
    assert server.post_json({"pixels": digit_pixels(0)})[0] == 200


@pytest.mark.parametrize("headers, message", [
    ("Content-Length: 2\r\nContent-Length: 40\r\n", "2 Content-Length headers"),
    ("Content-Length: +2\r\n", "bad Content-Length '+2'"),
    ("Content-Length: 1_0\r\n", "bad Content-Length '1_0'"),
    ("Content-Length: 99999999999999999999999\r\n", "bad Content-Length"),
    ("Transfer-Encoding: chunked\r\nContent-Length: 2\r\n", "Transfer-Encoding"),
])
def test_ambiguous_lengths_get_400(server, headers, message):
    status, answer = raw(server, post(headers, b"{}"))
    assert status == 400 and message in answer["error"], answer


@pytest.mark.parametrize("pixel", [b"1" + b"0" * 400, b"-1" + b"0" * 400])
def test_an_integer_too_large_for_a_float_gets_400_naming_pixels(server, pixel):
    status, answer = server.post_json(b'{"pixels": [[' + pixel + b", 0]]}")
    assert status == 400 and '"pixels"' in answer["error"] and "too large" in answer["error"]


@pytest.mark.parametrize("host, want", [
    ("{HOST}", 200), ("localhost:{PORT}", 200), ("LOCALHOST:{PORT}", 200),
    ("evil.example:{PORT}", 421), ("127.0.0.1.nip.io:{PORT}", 421), ("127.0.0.1:1", 421),
    ("127.0.0.1", 421), ("", 421),
])
def test_only_host_names_of_this_machine_are_answered(server, host, want):
    host = host.replace("{PORT}", str(server.port))
    status, answer = raw(server, f"GET /api/map HTTP/1.1\r\nHost: {host}\r\n"
                                 "Connection: close\r\n\r\n".encode())
    assert status == want, answer
    if want == 421:
        assert "does not name this server" in answer["error"]


@pytest.mark.parametrize("hosts", [[], ["{HOST}", "{HOST}"]])
def test_no_host_or_two_hosts_get_400(server, hosts):
    lines = "".join(f"Host: {h}\r\n" for h in hosts)
    status, answer = raw(server, f"GET / HTTP/1.1\r\n{lines}\r\n".encode())
    assert status == 400 and f"one Host header, got {len(hosts)}" in answer["error"]


@pytest.mark.parametrize("host, bound, local, ok", [
    ("127.0.0.1:8000", ("127.0.0.1", 8000), "", True),
    ("localhost:8000", ("127.0.0.1", 8000), "", True),
    ("[::1]:8000", ("::1", 8000), "", True),
    ("[::1]", ("::1", 80), "", True),
    ("localhost", ("127.0.0.1", 80), "", True),
    ("localhost", ("127.0.0.1", 8000), "", False),
    ("192.168.1.5:8000", ("0.0.0.0", 8000), "192.168.1.5", True),
    ("0.0.0.0:8000", ("0.0.0.0", 8000), "", False),
    ("attacker.example:8000", ("0.0.0.0", 8000), "192.168.1.5", False),
    ("::1", ("::1", 8000), "", False),
])
def test_host_is_local(host, bound, local, ok):
    assert http_checks.host_is_local(host, bound, local) is ok


def test_a_server_on_ipv6_loopback_answers_its_bracketed_host(server):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    try:
        six = serve.make_server(server.digit_map, "::1", 0, quiet=True, timeout=2)
    except OSError as exc:
        pytest.skip(f"cannot bind ::1 here: {exc}")
    t = threading.Thread(target=six.serve_forever, daemon=True)
    t.start()
    try:
        port = six.server_address[1]
        with socket.create_connection(("::1", port), timeout=20) as sock:
            sock.sendall(f"GET /api/map HTTP/1.1\r\nHost: [::1]:{port}\r\n"
                         "Connection: close\r\n\r\n".encode())
            reply = b"".join(iter(lambda: sock.recv(4096), b""))
        assert reply.startswith(b"HTTP/1.0 200") or reply.startswith(b"HTTP/1.1 200"), reply[:80]
    finally:
        six.shutdown()
        six.server_close()
        t.join(10)


def test_a_burst_of_64_clients_connects_at_once(server):
    """64 simultaneous connects all land in the listen queue (a queue of 5 drops SYNs, which
    clients retry after a second); every client then gets its answer."""
    n, connect, statuses = 64, [], []
    gate = threading.Barrier(n)
    lock = threading.Lock()

    def client():
        gate.wait(timeout=30)
        start = time.monotonic()
        with socket.create_connection((server.host, server.port), timeout=30) as sock:
            took = time.monotonic() - start
            sock.sendall(f"GET /static/style.css HTTP/1.1\r\nHost: {server.host}:{server.port}"
                         "\r\nConnection: close\r\n\r\n".encode())
            reply = b"".join(iter(lambda: sock.recv(65536), b""))
        with lock:
            connect.append(took)
            statuses.append(reply.split(b" ", 2)[1])
    threads = [threading.Thread(target=client, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert statuses == [b"200"] * n
    assert max(connect) < 0.9, sorted(connect)[-5:]  # no SYN had to be retried


def test_a_client_that_hangs_up_is_one_quiet_line(server):
    digit_server = server.server
    err = io.StringIO()
    with redirect_stderr(err):
        for exc in (BrokenPipeError(32, "Broken pipe"), ConnectionResetError(104, "reset")):
            try:
                raise exc
            except OSError:
                digit_server.quiet = False
                digit_server.handle_error(None, ("127.0.0.1", 5555))
                digit_server.quiet = True
                digit_server.handle_error(None, ("127.0.0.1", 5555))
    lines = err.getvalue().splitlines()
    assert lines == ["127.0.0.1: the client went away (BrokenPipeError)",
                     "127.0.0.1: the client went away (ConnectionResetError)"]
    err = io.StringIO()
    with redirect_stderr(err):
        try:
            raise RuntimeError("a real fault")
        except RuntimeError:
            digit_server.handle_error(None, ("127.0.0.1", 5555))
    assert "Traceback" in err.getvalue() and "a real fault" in err.getvalue()


def test_a_client_closing_mid_answer_leaves_no_traceback(server, capfd):
    digit_server = server.server
    digit_server.quiet = False
    try:
        for _ in range(20):  # bounded: a reset that lands during the write shows up quickly
            sock = socket.create_connection((server.host, server.port), timeout=10)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            sock.sendall(f"GET /api/map HTTP/1.1\r\nHost: {server.host}:{server.port}\r\n"
                         "\r\n".encode() * 50)
            sock.close()  # RST: the server's writes fail
        time.sleep(1.0)
    finally:
        digit_server.quiet = True
    assert "Traceback" not in capfd.readouterr().err
    assert server.request("GET", "/api/map")[0] == 200


@pytest.mark.parametrize("flag", ["--model", "--data"])
def test_serve_paths_too_long_exit_2_naming_the_flag(tmp_path, capsys, flag):
    args = ["--model", str(tmp_path / "m.npz"), flag, str(tmp_path / ("z" * 300))]
    with pytest.raises(SystemExit) as stop:
        serve.main(args)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"{flag}: " in err and "component of 300 bytes" in err and "Traceback" not in err


def test_serve_data_naming_a_file_exits_2_without_downloading(tmp_path, capsys, monkeypatch):
    fetched = []
    monkeypatch.setattr(serve.mnist, "fetch", lambda *a, **k: fetched.append(a))
    not_a_folder = tmp_path / "data.txt"
    not_a_folder.write_text("x")
    with pytest.raises(SystemExit) as stop:
        serve.main(["--model", str(tmp_path / "m.npz"), "--data", str(not_a_folder)])
    assert stop.value.code == 2 and fetched == []
    assert f"--data {not_a_folder}: is not a folder" in capsys.readouterr().err
