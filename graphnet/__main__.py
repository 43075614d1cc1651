"""``python -m graphnet``: report the active backend, versions, device and available backends."""
from __future__ import annotations

import os
import sys
from typing import Optional

import graphnet as gn
from graphnet.backends import ENV_VAR


def _bytes(n: int) -> str:
    """``n`` bytes in the largest unit that keeps the number >= 1."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"


def _host_memory() -> int:
    """Total physical memory of this machine in bytes (0 where unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 0


def _unavailable_reason(name: str) -> Optional[str]:
    """Why backend ``name`` cannot run here (None where it can)."""
    try:
        gn.get_backend(name)
    except gn.BackendUnavailableError as exc:
        return str(exc)
    return None


def report() -> list[str]:
    """The lines printed by ``python -m graphnet`` (raises where the active backend fails)."""
    b = gn.backend()
    lines = [f"graphnet {gn.__version__}", f"active backend: {b.name}"]
    lines += [f"{lib} {version}" for lib, version in b.versions().items()]
    lines.append(f"device: {b.device_name()}")
    mem = b.memory_info()
    lines.append("memory: " + (", ".join(f"{k.removesuffix('_bytes')} {_bytes(v)}"
                                          for k, v in mem.items()) or "unknown"))
    host = _host_memory()
    if host:
        lines.append(f"host memory: {_bytes(host)}")
    lines.append("available backends: " + ", ".join(gn.available_backends()))
    for name in gn.backend_names():
        reason = _unavailable_reason(name)
        if reason is not None:
            lines.append(f"unavailable: {name}: {reason}")
    return lines


def main() -> int:
    """Print the report; a clear one-line error and exit status 1 where the backend can't run."""
    try:
        lines = report()
    except (gn.BackendUnavailableError, ValueError) as exc:
        print(f"graphnet: error: {exc}", file=sys.stderr)
        print(f"(the backend comes from {ENV_VAR}; valid names: "
              + ", ".join(gn.backend_names()) + ")", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
