"""Check new tests against recorded mutmut survivors without a new mutmut run.

    python -m tools.replay_survivors graphnet/optim.py tests/test_promises_optim.py [pytest args]
    python -m tools.replay_survivors --unchecked graphnet/io.py tests/test_io.py  # also mutants
                                                   # an interrupted mutmut run never reached

Each surviving, untested or timed-out mutant of the file is written into the working tree in turn,
the given tests run, and the file restored; prints ``name, killed|SURVIVES, the change``.
mutmut itself would first re-trace the whole suite because tests were added; this takes
seconds per mutant. Leaves the file as it was, even when interrupted.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPLAYED = (0, 33, 36, 24, -24)  # survived, no tests, wall-clock timeout, CPU-time limit (SIGXCPU)


def mutant_diff(name: str) -> tuple[str, str]:
    """(old, new) source text of one mutant, dedented as mutmut shows it."""
    diff = subprocess.run([sys.executable, "-m", "mutmut", "show", name], capture_output=True, text=True).stdout
    body = [l for l in diff.splitlines()
            if l[:1] in (" ", "-", "+") and not l.startswith(("---", "+++"))]
    return ("\n".join(l[1:] for l in body if l[:1] in " -"),
            "\n".join(l[1:] for l in body if l[:1] in " +"))


def apply(source: str, old: str, new: str) -> str | None:
    """``source`` with the mutant in, trying the indentation of a function or a method."""
    for indent in ("", "    ", "        "):
        o = "\n".join(indent + l if l else l for l in old.split("\n"))
        n = "\n".join(indent + l if l else l for l in new.split("\n"))
        if source.count(o) == 1:
            return source.replace(o, n)
    return None


def main(argv: list[str]) -> int:
    unchecked = argv[:1] == ["--unchecked"]
    src, pytest_args = argv[unchecked], argv[unchecked + 1:]
    meta = json.loads(Path("mutants", src + ".meta").read_text())["exit_code_by_key"]
    original = Path(src).read_text()
    codes = REPLAYED + ((None,) if unchecked else ())
    for name in sorted(k for k, v in meta.items() if v in codes):
        old, new = mutant_diff(name)
        mutated = apply(original, old, new)
        if mutated is None:
            print(f"{name}\tnot applied (edit by hand)", flush=True)
            continue
        Path(src).write_text(mutated)
        try:
            r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                                *pytest_args], capture_output=True, text=True)
        finally:
            Path(src).write_text(original)
        change = " / ".join(l.strip() for l in new.split("\n") if l not in old.split("\n"))
        print(f"{name}\t{'killed' if r.returncode else 'SURVIVES'}\t{change[:120]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
