"""One CI summary line from pytest's JUnit XML: the whole suite, then the NVRTC and emulated parts.

    python .ci/summary.py REPORT.xml PYTEST_EXIT_CODE
NVRTC = tests/test_kernels_nvrtc.py (compiled only, not executed on a GPU); emulated = the
cupy-emulated cases (the CuPy backend's code on the CPU emulation of CuPy, not on a GPU).
"""
from __future__ import annotations

import collections
import sys
import xml.etree.ElementTree as ET


def outcome(case: ET.Element) -> str:
    for tag, name in (("failure", "failed"), ("error", "errors"), ("skipped", "skipped")):
        node = case.find(tag)
        if node is not None:
            if tag == "skipped" and "xfail" in (node.get("type", "") + node.get("message", "")):
                return "xfailed"
            return name
    return "passed"


def main(report: str, rc: str) -> None:
    counts = {k: collections.Counter() for k in ("all", "nvrtc", "emulated")}
    for case in ET.parse(report).iter("testcase"):
        result = outcome(case)
        counts["all"][result] += 1
        if case.get("classname", "").endswith("test_kernels_nvrtc"):
            counts["nvrtc"][result] += 1
        if "cupy-emulated" in case.get("name", ""):
            counts["emulated"][result] += 1
    fmt = lambda c: ", ".join(f"{n} {k}" for k, n in sorted(c.items())) or "none"  # noqa: E731
    print(f"CI summary: pytest exit {rc}; all tests: {fmt(counts['all'])}; "
          f"NVRTC kernel compilation (compiled only, not run on a GPU): {fmt(counts['nvrtc'])}; "
          f"CuPy backend on the CPU emulation (not a GPU): {fmt(counts['emulated'])}")
    if rc == "0" and (counts["nvrtc"]["passed"] == 0 or counts["emulated"]["passed"] == 0):
        print("CI summary: WARNING: the NVRTC or emulated CuPy checks did not run (see skips)")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
