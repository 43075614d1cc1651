"""A local web page: draw a digit, watch the model's ten probabilities and where the digit
lands among the deep features of 1000 test images.

    python examples/mnist/serve.py --model runs/fast/model.npz          # http://127.0.0.1:8000/
    python examples/mnist/serve.py --model runs/fast/model.npz --port 8080 --backend cupy

Everything is served from this machine (the page, its script and style live in
static/; no CDN, no internet). The map is the PCA of the model's last hidden layer
for the first 1000 MNIST test images, computed once at start with graphnet.viz (the
projection examples/mnist/visualize.py draws); each drawing is projected with it.

The browser posts the canvas as JSON ``{"image": "data:image/png;base64,..."}`` (or
``{"pixels": [[grey, ...], ...]}``, 0..255) to /api/predict; the server turns it into
a 28x28 digit with digits.py, exactly as predict.py does for files. Requests are
checked (method, path, size, content type, JSON, image size); bad ones get a 4xx
answer with a message and the server keeps serving.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import sys
import threading
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional

import numpy as np

from graphnet import ArgumentError, to_numpy, viz
from graphnet.datasets import mnist
from graphnet.io import check_path

if __package__:  # part of the package: python -m examples.mnist.serve, or imported
    from . import digits
    from .http_checks import (DRAIN_LIMIT, MAX_BODY, MAX_SIDE,  # noqa: F401 (still serve's names)
                              RequestError, drawing_from_json, host_is_local, read_json)
else:  # run by path (python examples/mnist/serve.py): this folder is on the path
    import digits
    from http_checks import (DRAIN_LIMIT, MAX_BODY, MAX_SIDE,  # noqa: F401 (still serve's names)
                             RequestError, drawing_from_json, host_is_local, read_json)

HERE = Path(__file__).resolve().parent

STATIC = HERE / "static"
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".png": "image/png"}
N_MAP = 1000              #: test images on the map
N_NEIGHBOURS = 8          #: nearest test images shown for a drawing


class DigitMap:
    """The model, and the map of its deep features for test images (computed once)."""

    def __init__(self, model: Any, images: np.ndarray, labels: np.ndarray) -> None:
        self.model = model
        self.images = np.asarray(images, dtype=np.uint8)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.lock = threading.Lock()  # one graph run at a time
        self.projection: Optional[viz.Projection] = None
        self.features: Optional[np.ndarray] = None
        if model.features is not None:
            feats = model.deep_features(self.images)[1]
            self.projection = viz.pca(feats, 2)  # as viz.feature_projection / visualize.py
            self.features = to_numpy(feats).astype(np.float64)

    def map_json(self) -> dict[str, Any]:
        """The map's points, labels and explained variance (or why there is no map)."""
        if self.projection is None:
            return {"available": False, "reason": "this network has no hidden layer"}
        return {"available": True, "points": np.round(self.projection.points, 4).tolist(),
                "labels": self.labels.tolist(),
                "explained": [float(v) for v in self.projection.explained],
                "width": int(self.features.shape[1])}

    def predict(self, grey: np.ndarray) -> dict[str, Any]:
        """Probabilities, the 28x28 image, map point and nearest test images for a drawing."""
        try:
            image = digits.to_mnist(grey, "the drawing")
        except digits.DigitError as exc:
            raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, str(exc)) from None
        with self.lock:
            if self.projection is None:
                probs, point, nearest = to_numpy(self.model.predict_proba(image)), None, []
            else:
                probs, feats = self.model.deep_features(image)
                probs, feats = to_numpy(probs), to_numpy(feats).astype(np.float64)
                point = [float(v) for v in self.projection.transform(feats[None])[0]]
                order = np.argsort(((self.features - feats) ** 2).sum(axis=1), kind="stable")
                nearest = [{"index": int(i), "label": int(self.labels[i]),
                            "pixels": self.images[i].ravel().tolist()}
                           for i in order[:N_NEIGHBOURS]]
        probs = [float(p) for p in probs]
        if not np.isfinite(probs).all():
            raise RequestError(HTTPStatus.INTERNAL_SERVER_ERROR, "the model's probabilities "
                               "hold NaN or inf: its weights overflow on this drawing")
        return {"probabilities": probs, "top": int(np.argmax(probs)),
                "image": image.ravel().tolist(), "point": point, "neighbours": nearest}


class Handler(BaseHTTPRequestHandler):
    """Routes: GET / and /static/<file>, GET /api/map, POST /api/predict."""

    server_version = "graphnet-digits/1"
    timeout = 20  # seconds a client may take to send its request
    digit_map: DigitMap
    assets: dict[str, tuple[bytes, str]]
    quiet = False

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._answer(self._get)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(self._get, head=True)

    def do_POST(self) -> None:  # noqa: N802
        self._answer(self._post)

    def _refuse_method(self) -> None:
        self._answer(self._method_not_allowed)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method  # noqa: N815

    def _get(self) -> tuple[HTTPStatus, bytes, str]:
        path = self.path.split("?", 1)[0]
        if path == "/api/map":
            return HTTPStatus.OK, _json_bytes(self.digit_map.map_json()), "application/json"
        if path == "/api/predict":
            raise RequestError(HTTPStatus.METHOD_NOT_ALLOWED, "use POST for /api/predict")
        name = "index.html" if path == "/" else \
            path[len("/static/"):] if path.startswith("/static/") else None
        asset = self.assets.get(name)
        if asset is None:
            raise RequestError(HTTPStatus.NOT_FOUND, f"no such page: {path}")
        return HTTPStatus.OK, asset[0], asset[1]

    def _post(self) -> tuple[HTTPStatus, bytes, str]:
        path = self.path.split("?", 1)[0]
        if path != "/api/predict":
            status = HTTPStatus.METHOD_NOT_ALLOWED if path in ("/", "/api/map") or \
                path.removeprefix("/static/") in self.assets else HTTPStatus.NOT_FOUND
            raise RequestError(status, f"cannot POST to {path}; POST drawings to /api/predict")
        payload = read_json(self.headers, self.rfile.read)
        answer = self.digit_map.predict(drawing_from_json(payload))
        return HTTPStatus.OK, _json_bytes(answer), "application/json"

    def _check_host(self) -> None:
        """Answer only requests whose Host names this machine (a DNS-rebinding guard: a web
        page whose own name now resolves to 127.0.0.1 must not reach this server)."""
        hosts = self.headers.get_all("Host") or []
        if len(hosts) != 1:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"expected one Host header, got {len(hosts)}")
        if not host_is_local(hosts[0], self.server.server_address[:2],
                             self.connection.getsockname()[0]):
            raise RequestError(HTTPStatus.MISDIRECTED_REQUEST,
                               f"Host {hosts[0]!r:.80} does not name this server; use "
                               f"http://127.0.0.1:{self.server.server_address[1]}/")

    def _method_not_allowed(self) -> tuple[HTTPStatus, bytes, str]:
        raise RequestError(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not supported")

    def _answer(self, route: Any, head: bool = False) -> None:
        try:
            self._check_host()
            status, body, ctype = route()
        except RequestError as exc:
            status, body, ctype = exc.status, _json_bytes({"error": exc.message}), \
                "application/json"
            if exc.status in (HTTPStatus.REQUEST_ENTITY_TOO_LARGE, HTTPStatus.LENGTH_REQUIRED,
                              HTTPStatus.BAD_REQUEST, HTTPStatus.REQUEST_TIMEOUT,
                              HTTPStatus.MISDIRECTED_REQUEST):
                self.close_connection = True  # an unread body must not be taken as a request
        except Exception as exc:  # keep serving whatever went wrong
            traceback.print_exc()
            status, body, ctype = HTTPStatus.INTERNAL_SERVER_ERROR, \
                _json_bytes({"error": f"internal error: {type(exc).__name__}: {exc}"}), \
                "application/json"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if status == HTTPStatus.METHOD_NOT_ALLOWED:
            self.send_header("Allow", "GET, HEAD, POST")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def send_error(self, code: int, message: Optional[str] = None,
                   explain: Optional[str] = None) -> None:
        """http.server's own refusals (bad request line, unknown method, ...) as JSON; an
        unknown method is 405 Method Not Allowed, not 501."""
        if code == HTTPStatus.NOT_IMPLEMENTED:
            code, message = HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not supported"
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # an unparsable request line: answer in HTTP/1.0
            self.request_version = "HTTP/1.0"
        body = _json_bytes({"error": message or HTTPStatus(code).phrase})
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        if code == HTTPStatus.METHOD_NOT_ALLOWED:
            self.send_header("Allow", "GET, HEAD, POST")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if not self.quiet:
            super().log_message(format, *args)


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def load_assets(folder: Path = STATIC) -> dict[str, tuple[bytes, str]]:
    """Every page file (bytes and content type) by name, read once."""
    return {p.name: (p.read_bytes(), CONTENT_TYPES[p.suffix]) for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix in CONTENT_TYPES}


def make_server(digit_map: DigitMap, host: str = "127.0.0.1", port: int = 8000,
                quiet: bool = False, timeout: float = Handler.timeout) -> ThreadingHTTPServer:
    """A threaded HTTP server for the page (port 0: a free port; see ``server_address``);
    ``timeout``: seconds a client may take to send a request."""
    handler = type("DigitHandler", (Handler,), {"digit_map": digit_map, "assets": load_assets(),
                                                "quiet": quiet, "timeout": timeout})
    server_class = DigitServer6 if ":" in host else DigitServer
    server = server_class((host, port), handler)
    server.quiet = quiet
    return server


class DigitServer(ThreadingHTTPServer):
    """The threaded server: a deep listen queue (a burst of clients is not left to retry),
    and a client that hangs up logged as one line, not a traceback."""

    daemon_threads = True
    request_queue_size = 128
    quiet = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            if not self.quiet:
                print(f"{client_address[0]}: the client went away ({type(exc).__name__})",
                      file=sys.stderr)
            return
        super().handle_error(request, client_address)


class DigitServer6(DigitServer):
    """:class:`DigitServer` on an IPv6 address."""

    address_family = socket.AF_INET6


def build_map(model: Any, data: Optional[str] = None, n: int = N_MAP) -> DigitMap:
    """The DigitMap of ``model`` for the first ``n`` MNIST test images."""
    _, _, x_test, y_test = mnist.load(data)
    return DigitMap(model, x_test[:n], y_test[:n])


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a model.npz written by train.py (or its folder)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--backend", choices=["numpy", "cupy"],
                   help="where the model runs (default: GRAPHNET_BACKEND or numpy)")
    p.add_argument("--data", help="folder with the MNIST IDX files (default: the cache)")
    p.add_argument("--quiet", action="store_true", help="do not log each request")
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        p.error(f"--port must be in 0..65535, got {args.port}")
    try:
        check_path(args.model, "--model")
        if args.data is not None and os.path.lexists(check_path(args.data, "--data")) \
                and not os.path.isdir(args.data):
            raise ArgumentError(f"--data {args.data}: is not a folder")
    except ArgumentError as exc:
        p.error(str(exc))
    try:
        model = digits.load_model(args.model, args.backend)
        digit_map = build_map(model, args.data)
    except (digits.SetupError, mnist.MNISTError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot read the MNIST test images: {exc}", file=sys.stderr)
        return 2
    try:
        server = make_server(digit_map, args.host, args.port, args.quiet)
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    if not ipaddress.ip_address(host).is_loopback:
        print(f"warning: listening on {host}: other machines can reach this page", file=sys.stderr)
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {args.model} on http://{shown}:{port}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
