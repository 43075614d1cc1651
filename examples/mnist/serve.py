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
import base64
import binascii
import ipaddress
import json
import sys
import threading
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional

import numpy as np

from graphnet import to_numpy, viz
from graphnet.datasets import mnist

if __package__:  # part of the package: python -m examples.mnist.serve, or imported
    from . import digits
else:  # run by path (python examples/mnist/serve.py): this folder is on the path
    import digits

HERE = Path(__file__).resolve().parent

STATIC = HERE / "static"
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".png": "image/png"}
MAX_BODY = 1 << 20        #: bytes a request body may have
DRAIN_LIMIT = 16 << 20    #: a larger body is read and dropped up to this, then the link closed
MAX_SIDE = 1000           #: a posted picture may be at most this many pixels on a side
N_MAP = 1000              #: test images on the map
N_NEIGHBOURS = 8          #: nearest test images shown for a drawing


class RequestError(Exception):
    """A request the server refuses: an HTTP status and a message for the client."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


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
        return {"probabilities": probs, "top": int(np.argmax(probs)),
                "image": image.ravel().tolist(), "point": point, "neighbours": nearest}


# --- requests -------------------------------------------------------------------------
def read_json(headers: Any, read: Any) -> Any:
    """The JSON body of a POST; ``read(n)`` reads n bytes of it.

    The body is read (or, when too large, drained up to ``DRAIN_LIMIT``) before any
    other check, so that the client, still sending, gets to read the answer.
    """
    length = headers.get("Content-Length")
    if length is None:
        raise RequestError(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required")
    try:
        n = int(length)
    except ValueError:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"bad Content-Length {length!r}") from None
    if n < 0:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"bad Content-Length {length!r}")
    if n > MAX_BODY:
        _drain(read, min(n, DRAIN_LIMIT))
        raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                           f"the body may have at most {MAX_BODY} bytes, got {n}")
    try:
        data = read(n)
    except TimeoutError:
        raise RequestError(HTTPStatus.REQUEST_TIMEOUT, "the body did not arrive in time") from None
    if len(data) != n:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"the body ended after {len(data)} of {n} bytes")
    ctype = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise RequestError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                           f"expected Content-Type application/json, got {ctype or 'none'!r}")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"the body is not valid JSON: {exc}") from None


def _drain(read: Any, n: int, chunk: int = 1 << 16) -> None:
    while n > 0:
        got = len(read(min(chunk, n)))
        if not got:
            return
        n -= got


def drawing_from_json(payload: Any) -> np.ndarray:
    """Grey levels from ``{"image": PNG data URL}`` or ``{"pixels": 2-D list 0..255}``."""
    if not isinstance(payload, dict) or len(payload) != 1 or \
            not ({"image", "pixels"} & set(payload)):
        raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY,
                           'expected a JSON object {"image": "data:image/png;base64,..."} or '
                           '{"pixels": [[0..255, ...], ...]}')
    if "image" in payload:
        return _grey_from_data_url(payload["image"])
    return _grey_from_pixels(payload["pixels"])


def _grey_from_data_url(url: Any) -> np.ndarray:
    unprocessable = HTTPStatus.UNPROCESSABLE_ENTITY
    if not isinstance(url, str) or not url.startswith("data:image/") or ";base64," not in url:
        raise RequestError(unprocessable, '"image" must be a data URL: data:image/png;base64,...')
    try:
        data = base64.b64decode(url.split(";base64,", 1)[1], validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(unprocessable, '"image" holds invalid base64') from None
    try:
        return digits.decode_image(data, "the image", max_pixels=MAX_SIDE * MAX_SIDE)
    except digits.DigitError as exc:
        raise RequestError(unprocessable, str(exc)) from None


def _grey_from_pixels(rows: Any) -> np.ndarray:
    unprocessable = HTTPStatus.UNPROCESSABLE_ENTITY
    if not isinstance(rows, list) or not rows or not all(isinstance(r, list) for r in rows):
        raise RequestError(unprocessable, '"pixels" must be a non-empty list of rows (lists)')
    if len(rows) > MAX_SIDE or any(len(r) != len(rows[0]) for r in rows) \
            or not 0 < len(rows[0]) <= MAX_SIDE:
        raise RequestError(unprocessable, f'"pixels" must be a rectangle of at most {MAX_SIDE}x'
                                          f'{MAX_SIDE}, got {len(rows)} rows of lengths '
                                          f'{sorted({len(r) for r in rows})[:5]}')
    if not all(type(v) in (int, float) for r in rows for v in r):
        raise RequestError(unprocessable, '"pixels" must hold numbers only')
    grey = np.array(rows, dtype=np.float64)
    if not np.isfinite(grey).all() or grey.min() < 0 or grey.max() > 255:
        raise RequestError(unprocessable, '"pixels" must be grey levels in [0, 255]')
    return grey


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

    def _method_not_allowed(self) -> tuple[HTTPStatus, bytes, str]:
        raise RequestError(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not supported")

    def _answer(self, route: Any, head: bool = False) -> None:
        try:
            status, body, ctype = route()
        except RequestError as exc:
            status, body, ctype = exc.status, _json_bytes({"error": exc.message}), \
                "application/json"
            if exc.status in (HTTPStatus.REQUEST_ENTITY_TOO_LARGE, HTTPStatus.LENGTH_REQUIRED,
                              HTTPStatus.BAD_REQUEST, HTTPStatus.REQUEST_TIMEOUT):
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
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


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
        model = digits.load_model(args.model, args.backend)
        digit_map = build_map(model, args.data)
        server = make_server(digit_map, args.host, args.port, args.quiet)
    except (digits.SetupError, mnist.MNISTError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    if not ipaddress.ip_address(host).is_loopback:
        print(f"warning: listening on {host}: other machines can reach this page", file=sys.stderr)
    print(f"serving {args.model} on http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
