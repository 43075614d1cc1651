"""Mutation testing of graphnet with mutmut 3 (configured in setup.cfg); see docs/testing.md.

    python -m tools.mutation                    # every module under graphnet/
    python -m tools.mutation graphnet/optim.py  # the mutants of some files
    python -m tools.mutation --since main       # the files changed since a git revision
    python -m tools.mutation --scores           # per-module table from the last runs
    mutmut results / mutmut show NAME           # the survivors, and what each one changed

mutmut runs each mutant only against the tests that executed the mutated function
(recorded once, in a traced run of the suite without ``slow`` and ``gpu`` tests).
"""
from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = "graphnet"


def changed_files(revision: str) -> list[str]:
    """The package's Python files that differ between ``revision`` and the working tree."""
    out = subprocess.run(["git", "diff", "--name-only", revision, "--", PACKAGE],
                         capture_output=True, text=True, check=True).stdout
    return [f for f in out.split() if f.endswith(".py") and Path(f).exists()]


def _verdict(code: int | None) -> str:
    """mutmut's exit code for one mutant, as a word."""
    if code is None:
        return "not run"
    if code == 0:
        return "survived"
    if code == 33:
        return "no tests"
    if code in (36, -24, 24):  # 36: wall-clock timeout; SIGXCPU: CPU-time limit
        return "timeout"
    return "killed"


def scores(root: Path = Path("mutants")) -> str:
    """A Markdown table of the verdicts per mutated module, from mutmut's ``.meta`` files."""
    rows = ["| module | mutants | killed | survived | no tests | timeout | not run | score |",
            "|---|---|---|---|---|---|---|---|"]
    for meta in sorted(root.glob("**/*.py.meta")):  # the package, and examples/ files chosen
        codes = json.loads(meta.read_text())["exit_code_by_key"].values()
        c = collections.Counter(_verdict(code) for code in codes)
        tested = c["killed"] + c["survived"] + c["no tests"]
        if not tested:
            continue
        score = f"{100 * c['killed'] / tested:.0f}%"
        rows.append(f"| {meta.relative_to(root).with_suffix('').as_posix()} | {sum(c.values())} | "
                    f"{c['killed']} | {c['survived']} | {c['no tests']} | {c['timeout']} | "
                    f"{c['not run']} | {score} |")
    return "\n".join(rows)


def _tolerate_import_failure_in_forced_fail() -> None:
    """mutmut checks its set-up by making every function raise and expecting failing tests.

    graphnet calls its own functions at import (conftest imports it), so that check ends
    in pytest's exit status 4 (conftest failed to import), which mutmut takes for a bad
    command line: a failed import is the failure it wanted, so accept it.
    """
    import mutmut.__main__ as mm
    from mutmut.runners.harness import BadTestExecutionCommandsException

    original = mm.run_forced_fail_test

    def forced_fail(runner):
        try:
            original(runner)
        except BadTestExecutionCommandsException:
            mm.set_mutant_under_test("")
            print("    done (graphnet failed to import, as it should)")
    mm.run_forced_fail_test = forced_fail


def _mutate_only(files: list[str]) -> None:
    """Rewrite only ``files`` in mutmut's copy; every other module is copied as it is.

    Saves generating the whole package's mutants, and keeps tests that read the source
    (module lengths, imports) meeting the real modules, not mutmut's rewritten ones.
    Files outside the configured ``source_paths`` (``examples/...``) join them.
    """
    from mutmut.configuration import config
    cfg = config()
    cfg.only_mutate = [Path(f).as_posix() for f in files]
    for f in files:
        top = Path(Path(f).parts[0])
        if not any(Path(f).is_relative_to(p) for p in cfg.source_paths):
            cfg.source_paths.append(top)
            cfg.resolved_mutated_source_paths.append(Path.cwd().resolve() / "mutants" / top)


def _forget_plain_copies(files: list[str], root: Path = Path("mutants")) -> None:
    """Delete mutmut's unmutated copy of each chosen file, so that its mutants are made.

    A file left out of an earlier run is copied into ``mutants/`` as it is; being newer
    than its source, mutmut would take that copy for its mutants and test none. Its
    functions were not traced either, so the recorded tests per function go too (mutmut
    then traces the suite again).
    """
    plain = [root / f for f in files if (root / f).is_file()
             and "MutantDict" not in (root / f).read_text(encoding="utf-8")]
    for copy in plain:
        copy.unlink()
    if plain:
        (root / "mutmut-stats.json").unlink(missing_ok=True)


def _fresh_chunk_pool_after_fork() -> None:
    """No OpenMP team in forked mutant processes.

    (mutmut forks every mutant's test run from a process that has already run the suite.
    graphnet's own chunk pool restarts in a forked child by itself: ``ops/conv/threads.py``.)
    """
    import os

    # GNU OpenMP (PyTorch's, used by a test that runs PyTorch beside graphnet) is not
    # fork-safe either: a child of a process that ran a parallel region hangs at its next
    # one. With one OpenMP thread no team is started (read when PyTorch loads, below).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # OpenBLAS (pthreads, fork-safe) also reads OMP_NUM_THREADS when its own variable is unset:
    # keep its usual thread count, or every "BLAS threads restored" test compares 1 with 1.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(os.cpu_count() or 1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", help="source files to mutate (default: all of graphnet/)")
    ap.add_argument("--since", metavar="REV", help="only files changed since this git revision")
    ap.add_argument("--jobs", type=int, default=1, help="parallel mutants (default 1)")
    ap.add_argument("--scores", action="store_true", help="print the per-module scores and stop")
    args = ap.parse_args(argv)
    if args.scores:
        print(scores())
        return 0
    for f in args.files:
        if not (f.endswith(".py") and Path(f).is_file()) or Path(f).is_absolute() or ".." in Path(f).parts:
            ap.error(f"files: {f!r} is not a Python file under this checkout (a relative path "
                     "such as graphnet/checks.py)")
    if args.jobs < 1:
        ap.error(f"--jobs must be >= 1, got {args.jobs}")
    files = list(args.files)
    if args.since:
        files += changed_files(args.since)
        if not files:
            print(f"no {PACKAGE}/ file changed since {args.since}: nothing to mutate")
            return 0
    if files:
        _mutate_only(files)
        _forget_plain_copies(files)
    _tolerate_import_failure_in_forced_fail()
    _fresh_chunk_pool_after_fork()
    from mutmut.__main__ import cli
    # no mutant names: mutmut then keeps the verdicts it has (an interrupted run resumes);
    # only_mutate already limits the run to the chosen files
    cli_args = ["run", "--max-children", str(args.jobs)]
    return cli.main(cli_args, standalone_mode=False) or 0


if __name__ == "__main__":
    sys.exit(main())
