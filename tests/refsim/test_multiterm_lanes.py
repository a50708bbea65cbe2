"""The lane choices of the multiterm route (refsim.backends.cpu_multiterm, steps 2'-5') against
the exact core, bit for bit, over enumerated edge cases.

Each case asserts which lanes the plan chose (float32 or float64 maxima; float64 sums, float32
sums, or float32 products with int32 sums in one or two parts) and whether the tile rounds a
float32 accumulator itself, so a silent change of path cannot make a test pass. The operands
sweep every alignment boundary of a group (terms from the group's top down past the truncation
point 2^q, one binade at a time), the largest truncated products the int32 sums must hold (the
operands' largest significands, one sign, a whole group and C beside them), cancellation to
zeros of either sign, all -0, all +0 and mixed zeros, terms below 2^q of either sign (truncated
to signed zeros), and C far above and below the products (the float32 scale clamps, overflow
of the accumulator); K is not a multiple of the group, so the last group is short and odd (the
two int32 halves differ in length). Every case also runs on 1 and 2 threads: the bits must not
change.
"""

from __future__ import annotations

import dataclasses

import numba
import numpy as np
import pytest
from route_pairs import routes

from refsim import hardware, matmul
from refsim.backends import cpu_gemm, cpu_multiterm, threads
from refsim.formats import get_format
from refsim.formats.policy import ROUNDINGS
from refsim.kernels.tile import AVX512
from refsim.specs import AccumSpec, GemmSpec
from refsim.validation.bits import assert_same_bits

ROUTE = cpu_multiterm.MultitermPlan.route


def _edge_rows(width: int, operand: str) -> list[list[float]]:
    """Rows of a (against b's columns of ones, of largest significands, of -1) whose group
    sums hit the lanes' edge cases; values of the operand format."""
    f = get_format(operand)
    man, top = f.man_bits, f.emax - 1  # big * 2^top is finite in every format
    low = f.emin - man  # the smallest subnormal's exponent
    big = 2.0 - 2.0**-man  # the largest significand
    rows = [
        [big * 2.0**top] * 8,  # the largest truncated products, one sign
        [-big * 2.0**top] * 8,
        [2.0**top, -(2.0**top), 2.0**low, -(2.0**low), 0.0, -0.0],  # cancellation
        [-0.0] * 4,  # every value -0
        [0.0] * 4,  # every value +0
        [0.0, -0.0, -0.0, 0.0],  # mixed zeros
        [-(2.0**low), -(2.0**low), 2.0**top, -(2.0**top)],  # -0 after truncation
        [2.0**low, 3 * 2.0**low, -(2.0**low)],  # subnormal operands alone
    ]
    # Every alignment boundary: the top term 2^top sets E; the others step down one binade at
    # a time past q = E - width + 1, with significands 1, 1 + 2^-man and the largest.
    for d in range(max(0, width - man - 2), min(width + 3, top - low) + 1):
        v = 2.0 ** (top - d)
        rows.append([2.0**top, v, -v * big, v * (1 + 2.0**-man), -v, v * big, -2.0**top])
    return rows


def _operands(rng, operand: str, width: int, m: int, n: int, k: int, batch: int = 2):
    """(P, M, K) a and (P, N, K) b: the edge rows in a's first rows against b's columns 0
    (ones), 1 (largest significands) and 2 (-1); random operand-format values elsewhere."""
    f = get_format(operand)
    big = 2.0 - 2.0**-f.man_bits
    exps = rng.integers(f.emin, f.emax, (batch, m, k))
    a = (1 + rng.integers(0, 2**f.man_bits, (batch, m, k)) / 2.0**f.man_bits) * np.exp2(exps)
    a *= rng.choice([-1.0, 1.0], a.shape)
    b = (1 + rng.integers(0, 2**f.man_bits, (batch, n, k)) / 2.0**f.man_bits) \
        * np.exp2(rng.integers(f.emin, f.emax, (batch, n, k)))
    b *= rng.choice([-1.0, 1.0], b.shape)
    b[:, 0], b[:, 1], b[:, 2] = 1.0, big, -1.0
    rows = _edge_rows(width, operand)
    assert m >= len(rows), (m, len(rows))
    for i, row in enumerate(rows):
        a[0, i] = np.resize(np.array(row), k)
        a[-1, i] = -a[0, i, ::-1]  # the last batch: negated and reversed
    return a.astype(np.float32), b.astype(np.float32)


def _c(rng, shape, operand: str) -> np.ndarray:
    """C: ordinary values, far above the products (the float32 scale's lower clamp), tiny
    (its upper clamp when a group's products are all zero), zeros; and beside the rows of
    largest products (a's rows 0 and 1 against b's column 1), C of the largest significand at
    their exponent: the first group's int32 sum at its bound."""
    c = rng.standard_normal(shape) * np.exp2(rng.integers(-6, 10, shape))
    c[:, 2:, 0] = [2.0**470, -(2.0**200), 2.0**-470, -(2.0**-140), 0.0, -0.0] * 4
    edge = (2 - 2.0**-23) * 2.0 ** (get_format(operand).emax - 1)
    c[0, :2, 1] = c[-1, 1::-1, 1] = [edge, -edge]
    return c


def _in_tile(mode: str) -> int:
    """The plan's round32 for a float32 accumulator in `mode` on this CPU."""
    index = ROUNDINGS.index(mode)
    return index if mode == "rne" or (AVX512 and mode in ("rtz", "rup", "rdn")) else -1


# (name, accumulator, operand format, expected (narrow1, narrow2, parts, round32, run)); one
# kernel each (the a100 row shares v100's).
RUN = _in_tile("rtz") >= 0  # step 8 needs the tile's rtz conversion
V100 = hardware.gemm_spec("v100", "fp16").acc
CASES = [
    ("h100-e4m3: float32 sums", hardware.gemm_spec("h100", "e4m3").acc, "e4m3fn",
     (1, 1, 0, -1, 0)),
    ("h100-fp16: int32 halves", hardware.gemm_spec("h100", "fp16").acc, "fp16",
     (1, 1, 2, _in_tile("rtz"), RUN)),
    ("v100-fp16: int32 sums", V100, "fp16", (1, 1, 1, _in_tile("rtz"), RUN)),
    # bf16 values within e6m7's exponents: every 2^(ea + eb) a float32 normal (step 8)
    ("a100-bf16: int32 sums", hardware.gemm_spec("a100", "bf16").acc, "e6m7",
     (1, 1, 1, _in_tile("rtz"), RUN)),
    ("v100 in chunks of 3 groups: a run per chunk",
     dataclasses.replace(V100, chunk=12, outer=AccumSpec("fp32", "rtz")), "fp16",
     (1, 1, 1, _in_tile("rtz"), RUN)),
    ("rdn normalized: int32 sums, OR of signs",
     AccumSpec("fp32", "rdn", "multiterm", group=8, width=25, variant="acc-aligned",
               align="normalized", operands="fp16"), "fp16", (1, 1, 1, _in_tile("rdn"), 0)),
    ("floor: float64 sums",
     dataclasses.replace(hardware.gemm_spec("h100", "fp16").acc, truncation="floor"), "fp16",
     (1, 0, 0, _in_tile("rtz"), 0)),
    ("rup acc-excluded: float32 sums, s + G outside the tile",
     AccumSpec("fp32", "rup", "multiterm", group=4, width=10, operands="fp16"), "fp16",
     (1, 1, 0, _in_tile("rup"), 0)),
    ("rne fp16 accumulator: rounded outside the tile",
     AccumSpec("fp16", "rne", "multiterm", group=8, width=12, variant="acc-aligned",
               align="product", operands="e4m3fn"), "e4m3fn", (1, 1, 0, -1, 0)),
]


@pytest.mark.parametrize("name,acc,operand,lanes", CASES, ids=[c[0] for c in CASES])
def test_lanes_match_the_exact_core(name, acc, operand, lanes, monkeypatch):
    monkeypatch.setattr(threads, "SERIAL_BELOW_NS", 0)  # small products on 2 threads too
    used = []

    def spy(work, n_jobs, n_threads):
        used.append(min(n_threads, n_jobs))
        threads.run_jobs(work, n_jobs, n_threads)

    monkeypatch.setattr(cpu_multiterm, "run_jobs", spy)
    rng = np.random.default_rng(24 + CASES.index((name, acc, operand, lanes)))
    k = 3 * acc.group + 5  # the last group short and odd
    a, b = _operands(rng, operand, acc.width, m=26, n=70, k=k)
    p = cpu_gemm.plan(a, b, acc, None, False)
    assert p is not None and p.route == ROUTE, name
    assert (p.narrow1, p.narrow2, p.parts, p.round32, p.run) \
        == (*map(bool, lanes[:2]), *lanes[2:4], bool(lanes[4]))
    spec, bt = GemmSpec(acc=acc), np.swapaxes(b, 1, 2)
    for c in (None, _c(rng, (2, 26, 70), operand)):
        want = np.asarray(matmul(a, bt, spec, c=c, route="exact"), np.float64)
        got = []
        for n_threads in (1, 2):
            numba.set_num_threads(n_threads)
            try:
                got.append(np.asarray(matmul(a, bt, spec, c=c, route="fast"), np.float64))
            finally:
                numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        for g in got:
            assert_same_bits(g.reshape(-1), want.reshape(-1),
                             context=f"{name} c={'none' if c is None else 'given'}")
    assert 2 in used, used  # the 2-thread runs split the jobs


def test_wide_exponents_take_float64_maxima():
    """bf16 operands spanning more than float32's exponent range: the maxima (and sums) run in
    float64 lanes, with the same bits."""
    rng = np.random.default_rng(7)
    acc = hardware.gemm_spec("a100", "bf16").acc
    a, b = _operands(rng, "bf16", acc.width, m=26, n=66, k=2 * acc.group + 3)
    a[:, :, 0] = 2.0**-120
    b[:, :, 1] = 2.0**-100
    p = cpu_gemm.plan(a, b, acc, None, False)
    assert p is not None and (p.narrow1, p.narrow2) == (False, False)
    assert_same_bits(*routes(a, b, acc), context="a100-bf16 wide")


def test_the_lane_conditions():
    """_narrow's bounds, at their edges: float32 sums up to 24 bits, int32 in one part up to
    31, in two halves up to 31 per half; float32 products only; the scale's range."""
    from refsim.backends.operands import OperandRange
    fp16 = OperandRange(True, 11, -24, 15)
    base = dict(order="multiterm", variant="acc-aligned", align="product", operands="fp16")

    def lanes(group, width, r=fp16, emin=-14, **kw):
        acc = AccumSpec("fp32", "rtz", group=group, width=width, **base, **kw)
        return cpu_multiterm._narrow(acc, r, r, emin)

    assert lanes(32, 17) == (True, True, 0)  # 6 + 17 + 1 = 24
    assert lanes(32, 18) == (True, True, 1)
    assert lanes(32, 24) == (True, True, 1)  # 6 + 24 + 1 = 31
    assert lanes(32, 25) == (True, True, 2)  # halves of 16: 5 + 25 + 1 = 31
    assert lanes(32, 26) == (True, False, 0)
    assert lanes(16, 26) == (True, True, 2)  # h100 fp16: halves of 8
    assert lanes(8, 25, truncation="floor") == (True, False, 0)
    wide = OperandRange(True, 8, -133, 127)  # bf16 at both ends
    assert lanes(8, 25, wide, emin=-126) == (False, False, 0)
    assert lanes(8, 25, OperandRange(True, 13, -24, 15)) == (True, False, 0)  # 26 bits


def test_the_run_conditions():
    """Step 8's conditions, at their edges: acc-aligned, align product, int32 sums, an fp32
    accumulator rounded toward zero in the tile, every nonzero 2^(ea + eb) at least 2^-126."""
    from refsim.backends.operands import OperandRange
    acc = hardware.gemm_spec("a100", "bf16").acc
    rtz = ROUNDINGS.index("rtz")

    def runs(low, int32_sums=True, round32=rtz, **kw):
        r = OperandRange(True, 8, low, 20)
        return cpu_multiterm._runs(dataclasses.replace(acc, **kw), r, r, -126, int32_sums,
                                   round32)

    assert runs(-63) and not runs(-64)  # 2^-126 and 2^-128: a float32 normal, and not
    assert not runs(-10, variant="acc-excluded")
    assert not runs(-10, align="normalized")
    assert not runs(-10, int32_sums=False)
    assert not runs(-10, round32=ROUNDINGS.index("rne"))
    assert not runs(-10, round32=-1)
    empty = OperandRange(True, 0, 1 << 20, -(1 << 20))
    assert cpu_multiterm._runs(acc, empty, OperandRange(True, 8, -130, 20), -126, True, rtz)
