"""The README's short tour runs as written and prints what it says it prints."""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import graphnet as gn

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_tour_runs_and_learns_xor():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    tour = next(b for b in blocks if "gn.Graph(" in b and "minimize" in b)
    printed = io.StringIO()
    with gn.use_backend("numpy"), contextlib.redirect_stdout(printed):
        exec(compile(tour, "README.md (tour)", "exec"), {})
    assert printed.getvalue().strip().splitlines()[-1] == "[0 1 1 0]"
