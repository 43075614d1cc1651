"""Replay a module's mutants against chosen tests, in mutmut's own mutated copy (seconds each).

    python -m tools.replay_mutants graphnet/io.py tests/test_io_mutants.py [more tests]
        [--all | --recorded] [--only NAME,NAME] [--marks "not slow"] [--timeout 120]
        [--copy mutants] [--meta mutants]

For each mutant of MODULE recorded in ``META/MODULE.meta`` whose verdict is survived, no
tests, timeout or not run (``--recorded``: not "not run"; ``--all``: every one), the test
files (copied into ``COPY/tests/``) run in a child forked from a process that has already
imported graphnet, with mutmut's ``MUTANT_UNDER_TEST`` naming the mutant; prints
``NAME<TAB>killed|SURVIVES|TIMEOUT``. The tests must pass without a mutant first.

Unlike :mod:`tools.replay_survivors` (which writes each mutant into the source and starts
pytest anew) it needs no source edits and no new interpreter per mutant, so it also serves to
give verdicts to the mutants an interrupted mutmut run never reached. A lower bound on what
the whole suite kills: only the given test files run. ``--copy`` may name a copy of
``mutants/`` (so that a mutmut run still using it is not disturbed); ``--meta`` where the
verdicts are read (default: ``COPY``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from tools.replay_survivors import REPLAYED  # survived, no tests, timeouts

FRAME_COUNTING = ("tests/test_layering.py::test_a_training_step_stays_short",
                  "tests/test_conv_package.py::test_a_conv_op_calls_at_most_five_frames_deep",
                  "tests/test_conv_winograd.py::test_a_winograd_conv_op_calls_at_most_five_frames_deep")


def chosen(meta: dict, every: bool, recorded: bool, only: set[str] | None) -> list[str]:
    """The mutant names to replay, in order."""
    codes = REPLAYED if recorded else REPLAYED + (None,)
    names = sorted(k for k, v in meta.items() if every or v in codes)
    if only:
        names = [k for k in names if k in only or k.rsplit(".", 1)[-1] in only]
    return names


def _run(pytest_args: list[str], name: str, timeout: float) -> int | str:
    from mutmut.mutation.trampoline import set_mutant_under_test
    pid = os.fork()
    if pid == 0:  # the child: one pytest run with the mutant switched on
        import pytest
        set_mutant_under_test(name)
        quiet = os.open(os.devnull, os.O_WRONLY)
        os.dup2(quiet, 1)
        os.dup2(quiet, 2)
        try:
            code = int(pytest.main(pytest_args))
        except BaseException:
            code = 99
        os._exit(code)
    start = time.monotonic()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() - start > timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout"
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("module", help="the mutated file, e.g. graphnet/io.py")
    ap.add_argument("tests", nargs="+", help="test files to run against each mutant")
    ap.add_argument("--all", action="store_true", help="every mutant, killed ones too")
    ap.add_argument("--recorded", action="store_true", help="only mutants with a verdict")
    ap.add_argument("--only", default="", help="comma-separated mutant names (or their tails)")
    ap.add_argument("--marks", default="not slow", help='pytest -m expression ("not slow")')
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per mutant")
    ap.add_argument("--copy", default="mutants", help="mutmut's mutated copy (or a copy of it)")
    ap.add_argument("--meta", default=None, help="where the .meta verdicts are (default: --copy)")
    args = ap.parse_args(argv)
    copy = Path(args.copy).resolve()
    meta_file = Path(args.meta or args.copy).resolve() / (args.module + ".meta")
    if not meta_file.is_file():
        ap.error(f"no verdicts at {meta_file}: run python -m tools.mutation {args.module} first")
    if args.timeout <= 0:
        ap.error(f"--timeout must be > 0, got {args.timeout}")
    names = []
    for t in args.tests:
        if not Path(t).is_file():
            ap.error(f"tests: {t!r} is not a file")
        dest = copy / "tests" / Path(t).name
        if Path(t).resolve() != dest:
            shutil.copy(t, dest)
        names.append(f"tests/{Path(t).name}")
    meta = json.loads(meta_file.read_text())["exit_code_by_key"]
    only = set(filter(None, args.only.split(","))) or None
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # a forked child cannot use an OpenMP team
    os.chdir(copy)
    sys.path.insert(0, str(copy))
    import graphnet  # noqa: F401  imported once, before the children fork
    pytest_args = ["-x", "-q", "-m", args.marks, "-p", "no:cacheprovider", "-W", "ignore",
                   *[a for d in FRAME_COUNTING for a in ("--deselect", d)], *names]
    if _run(pytest_args, "", args.timeout) != 0:
        print("the tests fail without a mutant: mend them first", file=sys.stderr)
        return 1
    for name in chosen(meta, args.all, args.recorded, only):
        code = _run(pytest_args, name, args.timeout)
        verdict = "TIMEOUT" if code == "timeout" else ("killed" if code else "SURVIVES")
        print(f"{name}\t{verdict}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
