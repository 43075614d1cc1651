"""The checks serve.py makes on a request before it reaches the model: headers, body, JSON."""
from __future__ import annotations

import base64
import binascii
import json
from http import HTTPStatus
from typing import Any

import numpy as np

from . import digits

MAX_BODY = 1 << 20        #: bytes a request body may have
DRAIN_LIMIT = 16 << 20    #: a larger body is read and dropped up to this, then the link closed
MAX_SIDE = 1000           #: a posted picture may be at most this many pixels on a side


class RequestError(Exception):
    """A request the server refuses: an HTTP status and a message for the client."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


# --- requests -------------------------------------------------------------------------
def read_json(headers: Any, read: Any) -> Any:
    """The JSON body of a POST; ``read(n)`` reads n bytes of it.

    The body is read (or, when too large, drained up to ``DRAIN_LIMIT``) before any
    other check, so that the client, still sending, gets to read the answer.
    """
    n = body_length(headers)
    try:
        if n > MAX_BODY:
            _drain(read, min(n, DRAIN_LIMIT))
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"the body may have at most {MAX_BODY} bytes, got {n}")
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


def body_length(headers: Any) -> int:
    """The one Content-Length of a request, plain decimal digits (no chunked bodies)."""
    if headers.get("Transfer-Encoding") is not None:
        raise RequestError(HTTPStatus.BAD_REQUEST, "Transfer-Encoding is not supported; send "
                                                   "the body with a Content-Length")
    lengths = headers.get_all("Content-Length") or []
    if not lengths:
        raise RequestError(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required")
    if len(lengths) > 1:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{len(lengths)} Content-Length headers "
                                                   "(one is allowed)")
    length = lengths[0].strip()
    if not (length.isascii() and length.isdigit()) or len(length) > 18:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"bad Content-Length {lengths[0]!r:.40}")
    return int(length)


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
    try:
        grey = np.array(rows, dtype=np.float64)
    except OverflowError:
        raise RequestError(HTTPStatus.BAD_REQUEST, '"pixels" holds an integer too large for a '
                                                   'number; grey levels are 0..255') from None
    if not np.isfinite(grey).all() or grey.min() < 0 or grey.max() > 255:
        raise RequestError(unprocessable, '"pixels" must be grey levels in [0, 255]')
    return grey


LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


def host_is_local(host: str, bound: tuple[str, int], local_ip: str = "") -> bool:
    """Whether a Host header value names this server: localhost, a loopback address, the
    bound address or the address the client reached, with the bound port (absent: port 80)."""
    host = host.strip().lower()
    name, sep, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
    if not sep or name.count(":") and not name.startswith("["):  # no port, or a bare IPv6
        name, port = host, "80"
    if port != str(bound[1]):
        return False
    name = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    return name in {*LOCAL_NAMES, bound[0].lower(), local_ip.lower()} - {"", "0.0.0.0", "::"}
