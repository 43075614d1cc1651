"""examples/mnist/serve.py: request checking over HTTP, and the page in headless Chromium."""
from __future__ import annotations

import base64
import http.client
import io
import json
import math
import os
import socket
import threading
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
from PIL import Image

import graphnet as gn
from graphnet import nn
from graphnet.datasets import mnist

from examples.mnist import digits, serve
from mnist_model import small_mnist_model


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class Running:
    """A serve.py server on a free port in a background thread."""

    def __init__(self, model_path: Path, timeout: float = 20) -> None:
        with gn.use_backend("numpy"):
            self.digit_map = serve.build_map(nn.load(model_path))
        self.server = serve.make_server(self.digit_map, "127.0.0.1", 0, quiet=True,
                                        timeout=timeout)
        self.host, self.port = self.server.server_address[:2]
        self.url = f"http://{self.host}:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def request(self, method: str, path: str, body: Optional[bytes] = None,
                headers: Optional[dict] = None) -> tuple[int, dict, Any]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            res = conn.getresponse()
            data = res.read()
            ctype = res.getheader("Content-Type", "")
            return res.status, dict(res.getheaders()), \
                json.loads(data) if ctype.startswith("application/json") and data else data
        finally:
            conn.close()

    def post_json(self, obj: Any) -> tuple[int, Any]:
        body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        status, _, answer = self.request("POST", "/api/predict", body,
                                         {"Content-Type": "application/json"})
        return status, answer

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def untrained_server(tmp_path_factory):
    """A server for an untrained model: enough to check how requests are handled."""
    path = tmp_path_factory.mktemp("serve") / "model.npz"
    with gn.use_backend("numpy"):
        gn.seed(0)
        nn.Classifier(nn.MLP([16, 10], 784, "tanh"), (784,)).save(path)
    running = Running(path, timeout=3)
    yield running
    running.close()


def digit_pixels(i: int = 0, scale: int = 5) -> list:
    _, _, x, _ = mnist.load()
    big = Image.fromarray(x[i]).resize((28 * scale, 28 * scale), Image.Resampling.BILINEAR)
    return np.asarray(big).tolist()


def png_data_url(grey: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(grey, dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_page_assets_and_map_are_served_locally(untrained_server):
    status, headers, page = untrained_server.request("GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    html = page.decode()
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in html
        status, _, body = untrained_server.request("GET", asset)
        assert status == 200 and len(body) > 100
    assert "http://" not in html and "https://" not in html  # nothing from elsewhere
    status, _, m = untrained_server.request("GET", "/api/map")
    assert status == 200 and m["available"] and len(m["points"]) == len(m["labels"]) == 1000
    assert m["width"] == 16 and len(m["explained"]) == 2
    proj = untrained_server.digit_map.projection
    np.testing.assert_allclose(np.array(m["points"]), proj.points, atol=1e-4)


def test_a_drawing_gets_probabilities_image_point_and_neighbours(untrained_server):
    dm = untrained_server.digit_map
    pixels = digit_pixels(3)
    for payload in ({"pixels": pixels}, {"image": png_data_url(np.array(pixels))}):
        status, answer = untrained_server.post_json(payload)
        assert status == 200, answer
        assert len(answer["probabilities"]) == 10
        assert math.isclose(sum(answer["probabilities"]), 1, rel_tol=1e-5)
        assert answer["top"] == int(np.argmax(answer["probabilities"]))
        image = np.array(answer["image"], dtype=np.uint8).reshape(28, 28)
        np.testing.assert_array_equal(image, digits.to_mnist(np.array(pixels, float)))
        with gn.use_backend("numpy"):
            probs, feats = dm.model.deep_features(image)
        np.testing.assert_allclose(answer["probabilities"], gn.to_numpy(probs), rtol=1e-5)
        np.testing.assert_allclose(answer["point"], dm.projection.transform(feats[None])[0],
                                   rtol=1e-5, atol=1e-6)
        dists = ((dm.features - gn.to_numpy(feats)) ** 2).sum(axis=1)
        assert [n["index"] for n in answer["neighbours"]] == list(np.argsort(dists)[:8])
        first = answer["neighbours"][0]
        assert first["pixels"] == dm.images[first["index"]].ravel().tolist()


def huge_png_url() -> str:
    buf = io.BytesIO()
    Image.new("L", (3000, 3000)).save(buf, format="PNG")  # small file, 9 million pixels
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


BAD_BODIES = [
    (b"{bad json", 400, "not valid JSON"),
    (b"\xff\xfe", 400, "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "not valid JSON"),
    (b"[1, 2]", 422, "expected a JSON object"),
    (b'{"pixels": [[0]], "image": "x"}', 422, "expected a JSON object"),
    (b'{"picture": 1}', 422, "expected a JSON object"),
    (b'{"pixels": [[0, 1], [2]]}', 422, "rectangle"),
    (b'{"pixels": [[[0, 1]], [[2, 3]]]}', 422, "numbers only"),
    (b'{"pixels": [1, 2, 3]}', 422, "list of rows"),
    (b'{"pixels": []}', 422, "non-empty list"),
    (b'{"pixels": [["a", "b"]]}', 422, "numbers only"),
    (b'{"pixels": [[300, 0]]}', 422, r"in \[0, 255\]"),
    (b'{"pixels": [[-1, 0]]}', 422, r"in \[0, 255\]"),
    (b'{"pixels": [[NaN, 0]]}', 422, r"in \[0, 255\]"),
    (json.dumps({"pixels": [[0] * 1001]}).encode(), 422, "at most 1000x1000"),
    (json.dumps({"pixels": [[0] * 40] * 40}).encode(), 422, "blank"),
    (b'{"image": 7}', 422, "data URL"),
    (b'{"image": "data:image/png;base64,!!!!"}', 422, "invalid base64"),
    (b'{"image": "data:image/png;base64,aGVsbG8="}', 422, "not an image"),
    (json.dumps({"image": huge_png_url()}).encode(), 422, "3000x3000 pixels, more than"),
]


@pytest.mark.parametrize("body, status, message", BAD_BODIES)
def test_malformed_drawings_get_4xx_and_a_message(untrained_server, body, status, message):
    got, answer = untrained_server.post_json(body)
    assert got == status, answer
    assert message.replace("\\", "") in answer["error"] or \
        __import__("re").search(message, answer["error"]), answer


def test_bad_requests_get_4xx_and_the_server_keeps_serving(untrained_server):
    s = untrained_server
    big = b"{" + b" " * (2 * serve.MAX_BODY) + b"}"
    checks = [
        (s.request("POST", "/api/predict", big, {"Content-Type": "application/json"}), 413),
        (s.request("POST", "/api/predict", b"{}", {"Content-Type": "text/plain"}), 415),
        (s.request("POST", "/api/predict", b"{}", {}), 415),
        (s.request("GET", "/nope"), 404),
        (s.request("GET", "/static/../serve.py"), 404),
        (s.request("GET", "/static/missing.js"), 404),
        (s.request("GET", "/api/predict"), 405),
        (s.request("POST", "/", b"{}", {"Content-Type": "application/json"}), 405),
        (s.request("POST", "/elsewhere", b"{}", {"Content-Type": "application/json"}), 404),
        (s.request("PUT", "/api/predict", b"{}", {"Content-Type": "application/json"}), 405),
        (s.request("DELETE", "/"), 405),
    ]
    for (status, headers, answer), want in checks:
        assert status == want, answer
        assert isinstance(answer, dict) and answer["error"], answer
    for raw, want in ((b"POST /api/predict HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json"
                       b"\r\n\r\n", 411),
                      (b"POST /api/predict HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: lots\r\n"
                       b"Content-Type: application/json\r\n\r\n", 400),
                      (b"POST /api/predict HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 100\r\n"
                       b"Content-Type: application/json\r\n\r\n{\"pix", 408),  # never finished
                      (b"BREW / HTTP/1.1\r\n\r\n", 405),
                      (b"GET / HTTP/1.1 extra words\r\n\r\n", 400)):
        with socket.create_connection((s.host, s.port), timeout=30) as sock:
            sock.sendall(raw.replace(b"{HOST}", f"{s.host}:{s.port}".encode()))
            head = b"".join(iter(lambda: sock.recv(4096), b"")).decode("latin-1")
        assert head.split(" ")[1] == str(want), (raw, head)
        assert json.loads(head.split("\r\n\r\n", 1)[1])["error"], head
    status, _ = s.post_json({"pixels": digit_pixels(0)})
    assert status == 200
    assert s.request("GET", "/api/map")[0] == 200


def test_an_internal_failure_answers_500_and_serving_goes_on(untrained_server, monkeypatch,
                                                            capsys):
    def broken(grey: Any) -> dict:
        raise RuntimeError("boom")
    monkeypatch.setattr(untrained_server.digit_map, "predict", broken)
    status, answer = untrained_server.post_json({"pixels": digit_pixels(0)})
    assert status == 500 and "boom" in answer["error"]
    monkeypatch.undo()
    assert untrained_server.post_json({"pixels": digit_pixels(0)})[0] == 200


def test_a_model_without_hidden_layer_still_predicts(tmp_path):
    path = tmp_path / "m.npz"
    with gn.use_backend("numpy"):
        gn.seed(0)
        nn.Classifier(nn.MLP([10], 784, "tanh"), (784,)).save(path)
    running = Running(path)
    try:
        assert running.request("GET", "/api/map")[2]["available"] is False
        status, answer = running.post_json({"pixels": digit_pixels(0)})
        assert status == 200 and answer["point"] is None and answer["neighbours"] == []
    finally:
        running.close()


# --- in a real browser ---------------------------------------------------------------------
def sync_playwright_or_skip() -> Any:
    """Playwright's entry point; a skip saying what is missing (a failure where CI sets
    GRAPHNET_REQUIRE_BROWSER=1)."""
    missing = None
    if not os.path.exists(CHROMIUM):
        missing = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "the playwright package is not installed (pip install playwright)"
    if missing and os.environ.get("GRAPHNET_REQUIRE_BROWSER") == "1":
        pytest.fail(f"GRAPHNET_REQUIRE_BROWSER=1 but {missing}")
    if missing:
        pytest.skip(missing)
    return sync_playwright


def one_stroke() -> list[tuple[float, float]]:
    return [(150 - 0.12 * t, 50 + t) for t in range(0, 181, 10)]


def zero_stroke() -> list[tuple[float, float]]:
    return [(140 + 65 * math.sin(2 * math.pi * k / 48), 140 - 95 * math.cos(2 * math.pi * k / 48))
            for k in range(49)]


def draw(page: Any, points: list[tuple[float, float]]) -> None:
    box = page.locator("#pad").bounding_box()
    page.mouse.move(box["x"] + points[0][0], box["y"] + points[0][1])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(box["x"] + x, box["y"] + y, steps=3)
    page.mouse.up()


def wait_for_answer(page: Any, before: int) -> None:
    """Until an answer newer than ``before`` arrived and no request is pending."""
    page.wait_for_function(f"Number(document.body.dataset.answers || 0) > {before}",
                           timeout=60_000)
    page.wait_for_timeout(300)
    page.wait_for_function("document.getElementById('status').textContent === ''",
                           timeout=60_000)


def answers(page: Any) -> int:
    return int(page.evaluate("Number(document.body.dataset.answers || 0)"))


def user_dot_colour(page: Any) -> list:
    """The map's pixel at the user's point (RGBA), read back from the canvas."""
    return page.evaluate("""() => {
        const c = document.getElementById('map');
        const [u, v] = c.dataset.user.split(',').map(Number);
        return Array.from(c.getContext('2d').getImageData(u, v, 1, 1).data);
    }""")


@pytest.mark.slow
def test_drawing_a_one_and_a_zero_in_chromium(tmp_path):
    sync_playwright = sync_playwright_or_skip()
    running = Running(small_mnist_model())
    errors: list[str] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(running.url + "/")
            page.wait_for_function("document.getElementById('legend').children.length === 10")
            assert page.locator("#map").get_attribute("data-user") is None
            for stroke, digit in ((one_stroke(), "1"), (zero_stroke(), "0")):
                page.click("#clear")
                assert page.locator("#top").get_attribute("data-class") == ""
                before = answers(page)
                draw(page, stroke)
                wait_for_answer(page, before)
                assert page.locator("#top").get_attribute("data-class") == digit
                assert page.locator("#top").text_content().startswith(digit)
                best = page.locator(f".bar[data-digit='{digit}']")
                assert "best" in best.get_attribute("class")
                assert float(best.locator(".pct").text_content().rstrip("%")) > 50
                assert page.locator("#map").get_attribute("data-user")
                assert user_dot_colour(page)[:3] == [0, 0, 0]  # the black dot is drawn there
                assert page.locator("#neighbours figure").count() == 8
                seen = page.evaluate("""() => Array.from(document.getElementById('seen')
                    .getContext('2d').getImageData(0, 0, 28, 28).data).filter((v, i) => i % 4 == 0
                    && v > 0).length""")
                assert 20 < seen < 400  # the 28x28 image the model received, with ink
            page.click("#clear")
            assert page.locator("#map").get_attribute("data-user") is None
            touch = browser.new_context(has_touch=True, viewport={"width": 1300, "height": 900})
            tpage = touch.new_page()
            tpage.goto(running.url + "/")
            tpage.wait_for_function("document.getElementById('legend').children.length === 10")
            box = tpage.locator("#pad").bounding_box()
            tpage.touchscreen.tap(box["x"] + 140, box["y"] + 140)  # a finger's dot is ink too
            wait_for_answer(tpage, 0)
            assert tpage.locator("#top").get_attribute("data-class") != ""
            browser.close()
    finally:
        running.close()
    assert not errors, errors
