"""Every CUDA kernel graphnet defines, compiled by the real NVRTC -- COMPILED ONLY, NOT EXECUTED ON A GPU.

Each kernel is taken as it is actually launched (by small training runs on the emulated CuPy
backend, in float32 and float64), turned into CUDA source by CuPy's own code generator with
CuPy's headers and options, and compiled by NVRTC to a cubin for compute capability 9.0 (H100/H200)
and 8.0 (A100). No device is needed or used. This catches CUDA compile errors in kernel bodies,
not wrong results or crashes at run time (the emulated agreement tests cover results on the CPU).
"""
from __future__ import annotations

import dataclasses

import pytest

from cupy_emulation import catalog
from cupy_emulation._kernels import compiler

pytestmark = pytest.mark.nvrtc
ARCHS = ("sm_90", "sm_80")
NVRTC_MISSING = catalog.nvrtc_unavailable_reason()
needs_nvrtc = pytest.mark.skipif(NVRTC_MISSING is not None, reason=f"NVRTC unavailable: {NVRTC_MISSING}")


def _launches() -> tuple[list, str | None]:
    if compiler() is None:
        return [], None
    return catalog.launched_kernels()


LAUNCHES, SURVEY_ERROR = _launches()  # at collection: the test ids name each kernel and dtype


def test_the_survey_runs_to_the_end():
    """The training runs that record the launches finish on the emulated backend."""
    if compiler() is None:
        pytest.skip("no C++ compiler: the emulated launch survey cannot run")
    assert SURVEY_ERROR is None, f"the kernel survey stopped early: {SURVEY_ERROR}"


def test_every_kernel_in_the_source_is_in_the_survey():
    """The launch survey reaches every kernel name graphnet's source declares."""
    if compiler() is None:
        pytest.skip("no C++ compiler: the emulated launch survey cannot run")
    declared, unreadable = catalog.declared_kernel_names()
    assert not unreadable, f"kernel names that cannot be read from the source: {unreadable}"
    assert declared, "no kernel found in graphnet's source: the scan is broken"
    launched = {launch.name for launch in LAUNCHES}
    missing = sorted(n for n in declared if not any(lname == n or lname.endswith("_" + n)
                                                      for lname in launched))
    assert not missing, (f"kernels {missing} are defined but never launched by "
                         "catalog._train_a_little: make it use the op that launches them")


def test_survey_launches_each_kernel_in_float32_and_float64():
    """Each kernel with a type placeholder is compiled for both float dtypes."""
    if compiler() is None:
        pytest.skip("no C++ compiler: the emulated launch survey cannot run")
    dtypes: dict[str, set] = {}
    for launch in LAUNCHES:
        if launch.types:  # kernels of fixed types only (e.g. uint64 random bits) have no T
            dtypes.setdefault(launch.name, set()).update(d for _, d in launch.types)
    incomplete = {n: sorted(d) for n, d in dtypes.items() if not {"float32", "float64"} <= d}
    assert not incomplete, f"kernels not launched in both float dtypes: {incomplete}"


@needs_nvrtc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("launch", LAUNCHES, ids=[f"{x.name}[{x.dtype_label}]" for x in LAUNCHES])
def test_kernel_compiles_with_nvrtc_compiled_only_not_executed(launch, arch):
    binary = catalog.compile_with_nvrtc(catalog.cuda_source(launch), arch)
    assert binary[:4] == b"\x7fELF", "NVRTC did not return a cubin"


@needs_nvrtc
@pytest.mark.parametrize("broken", ["out = g * (1 - y * undefined_name)",  # unknown identifier
                                    "out = g * (1 - y * y",                 # syntax error
                                    "out = g.missing_member"])              # T has no members
def test_a_broken_kernel_body_fails_to_compile(broken):
    """The check can fail: a kernel with a broken body raises NVRTC's error log."""
    from cupy.cuda.compiler import CompileException
    if not LAUNCHES:
        pytest.skip("no kernel survey (no C++ compiler)")
    good = next(x for x in LAUNCHES if x.in_spec == "T y, T g")
    bad = dataclasses.replace(good, operation=broken)
    catalog.compile_with_nvrtc(catalog.cuda_source(good), "sm_90")  # the unbroken one compiles
    with pytest.raises(CompileException, match="error"):
        catalog.compile_with_nvrtc(catalog.cuda_source(bad), "sm_90")


def test_under_mutmut_the_scan_reads_the_unmutated_package(tmp_path):
    """mutmut runs the tests from its rewritten copy in ``mutants/``; the kernel names are
    read from the package that copy was made from, not from the mutated variants."""
    kernel = 'def f(cp):\n    return cp.ElementwiseKernel("T x", "T y", "y = x", {!r})\n'
    (tmp_path / "graphnet").mkdir()
    (tmp_path / "graphnet" / "k.py").write_text(kernel.format("graphnet_copy"))
    (tmp_path / "mutants" / "graphnet").mkdir(parents=True)
    (tmp_path / "mutants" / "graphnet" / "k.py").write_text(
        kernel.format("graphnet_copy") + kernel.replace("def f", "def f__mutmut_1")
        .format("XXgraphnet_copyXX"))
    assert catalog.package_source(tmp_path / "mutants") == tmp_path / "graphnet"
    assert catalog.package_source(tmp_path) == tmp_path / "graphnet"
    names, unreadable = catalog.declared_kernel_names(catalog.package_source(tmp_path / "mutants"))
    assert (names, unreadable) == ({"graphnet_copy"}, [])
