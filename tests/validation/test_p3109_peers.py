"""gfloat's and pychop's P3109 paths, and pychop's Chop/FaultChop, held to refsim: no mismatch
outside the documented differences (validation/adapters.py KNOWN, docs/validation.md).

The fast tier runs a representative subset (both domains and signednesses, precision 1, a
K < 8 format, every mode, the stochastic mappings); @pytest.mark.slow runs every adapter on every
suite.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from refsim.validation.adapters import (
    GFLOAT_P3109_SAMPLE,
    P3109_FINITE,
    Adapter,
    adapters,
)
from refsim.validation.run import run_adapter

SUBSET = ("p3109_k8p4se", "p3109_k8p1ue", "p3109_k8p3sf", "p3109_k3p2sf")


def installed(module: str, peer: str) -> list[Adapter]:
    """The peer's adapters: absent module -> skip (it comes with the test extra); installed but
    failing to build -> fail."""
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (it comes with the test extra)")
    found, skipped = adapters((peer,))
    assert peer not in skipped, f"{module} is installed but its adapter fails: {skipped}"
    return found


def check(found: list[Adapter], dtypes: tuple[str, ...], max_size: int) -> int:
    """Run every adapter; return how many known differences showed."""
    known = 0
    for adapter in found:
        for dtype in dtypes:
            row = run_adapter(adapter, dtype, max_size=max_size)
            assert row is not None, adapter.name
            assert row.ok, "\n".join(str(r) for r in row.reports if not r.ok)
            known += row.known
    return known


def test_gfloat_p3109_adapters_cover_every_format_and_mode():
    found = installed("gfloat", "gfloat-p3109")
    assert len(found) == 120 * 2 * (5 + 8)
    assert {a.name for a in found if a.fmt == "p3109_k8p4se" and a.rounding == "sr"} == {
        f"gfloat-p3109 p3109_k8p4se/sr{o}/{v}{n}" for o in ("", "/satfinite")
        for v in ("fastest", "fast", "stochastic", "stochasticodd") for n in (2, 8)}
    assert set(GFLOAT_P3109_SAMPLE) <= {a.fmt for a in found}


def test_gfloat_p3109_agrees_on_a_subset():
    found = [a for a in installed("gfloat", "gfloat-p3109") if a.fmt in SUBSET]
    known = check(found, ("float64",), 512)
    assert known > 0  # the finite domain's NaN and the unsigned negatives show


def test_pychop_p3109_agrees_on_a_subset():
    found = [a for a in installed("pychop", "pychop-p3109") if a.fmt in SUBSET[:3]]
    assert {a.rounding for a in found} == {"rne", "rna", "rtz", "rup", "rdn", "rto", "sr"}
    check(found, ("float64",), 512)


def test_pychop_chop_agrees_outside_its_known_differences():
    found = [a for a in installed("pychop", "pychop") if a.fmt in ("fp16", "e4m3")]
    assert check(found, ("float32",), 1024) > 0


def test_pychop_faultchop_agrees_outside_its_known_differences():
    found = [a for a in installed("pychop", "pychop-faultchop") if a.fmt == "e5m2"]
    check(found, ("float64",), 256)


def test_finite_domain_nan_is_only_excused_in_the_finite_domain():
    """The extended formats have Inf: a NaN there is never excused."""
    found = installed("gfloat", "gfloat-p3109")
    [extended] = [a for a in found if a.fmt == "p3109_k8p4se" and a.rounding == "rne"
                  and a.overflow == "default"]
    [finite] = [a for a in found if a.fmt == "p3109_k8p4sf" and a.rounding == "rne"
                and a.overflow == "default"]
    assert "p3109_k8p4se" not in P3109_FINITE and extended.known is None
    x = np.array([300.0])
    assert finite.known is not None and finite.known(x, np.array([np.nan]), finite.reference(x))


@pytest.mark.slow
@pytest.mark.parametrize("peer", ["gfloat-p3109", "pychop-p3109", "pychop", "pychop-faultchop"])
def test_every_adapter_on_every_suite(peer):
    module = "gfloat" if peer.startswith("gfloat") else "pychop"
    check(installed(module, peer), ("float32", "float64"), 1 << 12)
