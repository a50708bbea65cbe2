"""IEEE P3109 formats: names, encodings, and conversions by P3109's rules, bit for bit.

The encodings are checked against gfloat 0.5.2's decode (written alongside the working group);
the conversions against refsim.formats.exact (the executable specification), on NumPy (Numba
CPU), torch and CUDA (the Numba simulator, in a child process). The fast tier takes a
representative subset; @pytest.mark.slow sweeps every P3109 format in every mode.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import refsim
from refsim.formats import P3109, FloatFormat, get_format, p3109_format
from refsim.formats.exact import quantize_exact, round_value_rbits
from refsim.formats.testing import boundary_values

ROOT = Path(__file__).resolve().parents[2]
MODES = ("rne", "rna", "rtz", "rup", "rdn", "rto")
OVERFLOWS = ("default", "saturate", "satfinite")
# Both domains and signednesses, precision 1 (code-parity ties), K < 8, all-subnormal-ish K=P.
SUBSET = ("p3109_k8p4se", "p3109_k8p1ue", "p3109_k3p2sf")


def same_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Equal bit patterns, or both NaN."""
    width = np.uint64 if a.dtype == np.float64 else np.uint32
    return (a.view(width) == b.view(width)) | (np.isnan(a) & np.isnan(b))


def assert_same(actual: np.ndarray, expected: np.ndarray, x: np.ndarray, what: str) -> None:
    same = same_bits(actual, expected)
    if not same.all():
        i = np.flatnonzero(~same)[:5]
        raise AssertionError(f"{what}: {int((~same).sum())} differ; inputs {x[i].tolist()} "
                             f"gave {actual[i].tolist()}, want {expected[i].tolist()}")


# ---- names and encodings ------------------------------------------------------------------------
def test_every_width_3_to_8_with_every_precision_signedness_and_domain():
    expected = {f"p3109_k{k}p{p}{s}{d}" for k in range(3, 9) for s in "su"
                for p in range(1, k + (1 if s == "u" else 0)) for d in "ef"}
    assert set(P3109) == expected and len(P3109) == 120
    for name, fmt in P3109.items():
        assert fmt.name == name and get_format(name) is fmt and get_format(name.upper()) is fmt
        k, p = fmt.bits, fmt.man_bits + 1
        assert fmt == p3109_format(k, p, fmt.signed, fmt.specials == "ext")
        assert fmt.bias == 1 << (fmt.exp_bits - 1) and fmt.p3109 and not fmt.has_negative_zero


def test_p3109_names_are_distinct_from_refsim_own_spellings():
    """Same codes as e4m3fnuz, other conversion rules: distinct formats, distinct names."""
    assert get_format("p3109_k8p4sf") != get_format("e4m3fnuz")
    assert np.array_equal(get_format("p3109_k8p4sf").all_values(),
                          get_format("e4m3fnuz").all_values(), equal_nan=True)
    assert get_format("e4m3ext").name == "e4m3ext" and not get_format("e4m3ext").p3109
    assert get_format("e5m2extu") == FloatFormat(5, 2, specials="ext", signed=False)
    assert get_format("p3109_k9p4se") == p3109_format(9, 4)  # parses beyond P3109_KS


@pytest.mark.parametrize(("args", "error", "match"), [
    ((8, 8), ValueError, r"p in 1\.\.7 \(signed\)"),
    ((2, 1), ValueError, "k >= 3"),
    ((8, 0, False), ValueError, r"p in 1\.\.8 \(unsigned\)"),
    ((8.0, 4), TypeError, "k must be an int"),
])
def test_p3109_format_refuses_bad_parameters(args, error, match):
    with pytest.raises(error, match=match):
        p3109_format(*args)


def test_p3109_flag_needs_p3109_specials():
    with pytest.raises(ValueError, match="p3109=True needs"):
        FloatFormat(4, 3, specials="ieee", p3109=True)
    with pytest.raises(ValueError, match="p3109=True needs"):
        FloatFormat(4, 3, specials="fnuz", subnormals=False, p3109=True)


def test_special_codes_of_the_extended_and_finite_domains():
    se, ue = get_format("p3109_k8p4se"), get_format("p3109_k8p4ue")
    assert (se.nan_code, se.inf_code, se.max) == (0x80, 0x7F, 224.0)
    assert (ue.nan_code, ue.inf_code) == (0xFF, 0xFE)
    values = se.decode(np.array([0x7F, 0xFF, 0x80, 0x00, 0x7E], np.uint64))
    assert values[0] == math.inf and values[1] == -math.inf and math.isnan(values[2])
    assert values[3] == 0 and not np.signbit(values[3]) and values[4] == 224.0
    assert ue.decode(np.array([0xFE, 0xFD], np.uint64)).tolist() == [math.inf, ue.max]
    assert int(se.encode(-np.inf)) == 0xFF and int(se.encode(-0.0)) == 0x00
    assert int(get_format("p3109_k8p1se").encode(np.float64(2.0**62))) == 0x7E


def test_every_code_of_every_format_decodes_as_gfloat_and_round_trips():
    gfloat = pytest.importorskip("gfloat", reason="gfloat decodes the P3109 codes independently")
    from gfloat.formats import format_info_p3109
    from gfloat.types import Domain, Signedness

    for name, fmt in P3109.items():
        info = format_info_p3109(fmt.bits, fmt.man_bits + 1,
                                 Signedness.Signed if fmt.signed else Signedness.Unsigned,
                                 Domain.Extended if fmt.specials == "ext" else Domain.Finite)
        assert info.name == name and info.max == fmt.max
        codes = np.arange(fmt.n_codes, dtype=np.uint64)
        theirs = np.array([gfloat.decode_float(info, int(c)).fval for c in codes])
        ours = fmt.decode(codes)
        assert same_bits(ours, theirs).all(), name
        assert np.array_equal(fmt.encode(ours), fmt.codes()), name


# ---- conversions: the rules the P3109 names follow -----------------------------------------------
def test_infinity_into_a_finite_domain_saturates_for_p3109_names_only():
    """P3109 Saturate: +-Inf into a finite-domain format is +-max under every saturation mode
    and rounding; refsim's own e4m3fnuz keeps its contract (NaN unless the mode rounds toward
    zero or the policy saturates)."""
    x = np.array([np.inf, -np.inf, 300.0, -1e9])
    for mode in MODES:
        for overflow in OVERFLOWS:
            got = refsim.quantize(x, "p3109_k8p4sf", mode, overflow=overflow)
            assert got.tolist() == [240.0, -240.0, 240.0, -240.0], (mode, overflow)
    assert np.isnan(refsim.quantize(x, "e4m3fnuz", "rne")).all()
    assert refsim.quantize(x, "e4m3fnuz", "rtz").tolist() == [240.0, -240.0, 240.0, -240.0]


def test_extended_domain_overflow_follows_ovfinf():
    x = np.array([1e9, -1e9, np.inf])
    assert refsim.quantize(x, "p3109_k8p4se", "rne").tolist() == [np.inf, -np.inf, np.inf]
    assert refsim.quantize(x, "p3109_k8p4se", "rtz").tolist() == [224.0, -224.0, np.inf]
    assert refsim.quantize(x, "p3109_k8p4se", "rdn").tolist() == [224.0, -np.inf, np.inf]
    # rto: OvfInf keeps +-max only for unsigned formats (refsim's own ext: +-max, as rtz)
    assert refsim.quantize(x, "p3109_k8p4se", "rto").tolist() == [np.inf, -np.inf, np.inf]
    assert refsim.quantize(x[:1], "p3109_k8p4ue", "rto").tolist() == [get_format(
        "p3109_k8p4ue").max]
    assert refsim.quantize(x, "e4m3ext", "rto").tolist() == [224.0, -224.0, np.inf]
    assert refsim.quantize(x, "p3109_k8p4se", "rne", overflow="satfinite").tolist() == [
        224.0, -224.0, 224.0]


def test_unsigned_negatives_clamp_to_zero():
    x = np.array([-1.25, -np.inf, -1e-30, -0.0, np.nan])
    got = refsim.quantize(x, "p3109_k8p4ue", "rne")
    assert got[:4].tolist() == [0.0, 0.0, 0.0, 0.0] and not np.signbit(got[:4]).any()
    assert np.isnan(got[4])
    assert np.isnan(refsim.quantize(x[:2], "e5m3b16fnu", "rne")).all()  # refsim's own: NaN


def test_precision_one_ties_go_to_the_even_code():
    """p3109_k8p1se: 1.0 has code 64 (even), 2.0 code 65, 4.0 code 66: the tie 1.5 stays at
    1.0 and the tie 3.0 goes to 4.0; rto keeps an odd code and rounds an even one away."""
    x = np.array([1.5, 3.0, 6.0, -3.0, 1.25, 2.5])
    assert refsim.quantize(x, "p3109_k8p1se", "rne").tolist() == [1.0, 4.0, 4.0, -4.0, 1.0, 2.0]
    assert refsim.quantize(x, "p3109_k8p1se", "rto").tolist() == [2.0, 2.0, 8.0, -2.0, 2.0, 2.0]
    assert refsim.quantize(x, "e7m0fnuz", "rne").tolist()[:2] == [2.0, 4.0]  # n's parity


# ---- every backend against the exact twin --------------------------------------------------------
def _check_numpy(name: str, dtype: type) -> None:
    fmt = get_format(name)
    x = boundary_values(fmt, dtype)
    for mode in MODES:
        for overflow in OVERFLOWS:
            assert_same(refsim.quantize(x, fmt, mode, overflow=overflow),
                        quantize_exact(x, fmt, mode, overflow), x, f"{name} {mode} {overflow}")


@pytest.mark.parametrize("name", SUBSET)
def test_numpy_matches_the_exact_twin(name):
    _check_numpy(name, np.float64)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(P3109))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_numpy_matches_the_exact_twin_every_format(name, dtype):
    _check_numpy(name, dtype)


def _sr_cases(name: str, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    fmt = get_format(name)
    x = boundary_values(fmt, dtype)
    x = x[np.isfinite(x)]
    rbits = np.random.default_rng(7).integers(0, 1 << 16, x.size).astype(np.uint16)
    return x, rbits


def _check_sr(name: str, dtype: type, sr_bits: int) -> None:
    fmt = get_format(name)
    x, rbits = _sr_cases(name, dtype)
    got = refsim.quantize(x, fmt, "sr", sr_bits=sr_bits, rbits=rbits)
    want = np.array([round_value_rbits(float(v), fmt, int(r) % (1 << sr_bits), sr_bits)
                     for v, r in zip(x, rbits, strict=True)], dtype)
    assert_same(got, want, x, f"{name} sr_bits={sr_bits}")


@pytest.mark.parametrize("name", SUBSET[:2])
def test_stochastic_with_caller_bits_matches_the_exact_twin(name):
    _check_sr(name, np.float64, 4)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(P3109))
def test_stochastic_with_caller_bits_every_format(name):
    for sr_bits in (3, 8, 9):
        _check_sr(name, np.float64, sr_bits)


SR_VARIANTS = ("floor", "half-up", "half-even", "half-odd")


def test_sr_variants_on_a_tie_of_the_fraction():
    """x = 1 + 1/32 in p3109_k8p4se: f = 1/4 of the quantum 1/8, so with sr_bits=1 the fraction
    f 2^1 = 1/2 is a tie: F = 0 (floor, half-even) or 1 (half-up, half-odd); with R = 1 the
    magnitude rounds up iff F + R >= 2."""
    x = np.array([1.03125, -1.03125])
    r = np.array([1, 1], np.uint8)
    got = {v: refsim.quantize(x, "p3109_k8p4se", "sr", sr_bits=1, rbits=r, sr_variant=v).tolist()
           for v in SR_VARIANTS}
    assert got == {"floor": [1.0, -1.0], "half-up": [1.125, -1.125],
                   "half-even": [1.0, -1.0], "half-odd": [1.125, -1.125]}


def test_sr_variant_needs_sr_and_sr_bits():
    x = np.array([1.0])
    with pytest.raises(ValueError, match="sr_variant='half-even' needs rounding='sr' and sr_bits"):
        refsim.quantize(x, "e4m3fn", "sr", sr_variant="half-even")
    with pytest.raises(ValueError, match="sr_variant must be one of floor, half-up"):
        refsim.quantize(x, "e4m3fn", "sr", sr_bits=3, sr_variant="C")


def _check_sr_variants(name: str, sr_bits: int) -> None:
    fmt = get_format(name)
    x, rbits = _sr_cases(name, np.float64)
    for variant in SR_VARIANTS[1:]:
        got = refsim.quantize(x, fmt, "sr", sr_bits=sr_bits, rbits=rbits, sr_variant=variant)
        want = np.array([round_value_rbits(float(v), fmt, int(r) % (1 << sr_bits), sr_bits,
                                           sr_variant=variant)
                         for v, r in zip(x, rbits, strict=True)])
        assert_same(got, want, x, f"{name} sr_bits={sr_bits} {variant}")


def test_sr_variants_match_the_exact_twin():
    _check_sr_variants("p3109_k8p1ue", 2)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(P3109))
def test_sr_variants_every_format(name):
    for sr_bits in (1, 4, 9):
        _check_sr_variants(name, sr_bits)


@pytest.mark.parametrize("route", ["torch", "torch-general"])
def test_torch_routes_match_numpy(route):
    torch = pytest.importorskip("torch", reason="the torch backend needs torch")
    from refsim.backends.torch_backend import quantize as tq

    for name in ("p3109_k8p1se", "p3109_k8p4ue", "p3109_k3p2sf"):
        fmt = get_format(name)
        x = boundary_values(fmt, np.float64)
        for mode in MODES:
            for overflow in ("default", "satfinite"):
                got = tq(torch.from_numpy(x), fmt, mode, overflow=overflow, route=route).numpy()
                assert_same(got, refsim.quantize(x, fmt, mode, overflow=overflow), x,
                            f"{route} {name} {mode} {overflow}")
        x, rbits = _sr_cases(name, np.float64)
        got = tq(torch.from_numpy(x), fmt, "sr", sr_bits=5,
                 rbits=torch.from_numpy(rbits.astype(np.int32)).to(torch.uint16),
                 route=route).numpy()
        assert_same(got, refsim.quantize(x, fmt, "sr", sr_bits=5, rbits=rbits), x,
                    f"{route} {name} sr")
        for variant in SR_VARIANTS[1:]:
            got = tq(torch.from_numpy(x), fmt, "sr", sr_bits=3, sr_variant=variant,
                     rbits=torch.from_numpy(rbits.astype(np.int32)).to(torch.uint16),
                     route=route).numpy()
            assert_same(got, refsim.quantize(x, fmt, "sr", sr_bits=3, rbits=rbits,
                                             sr_variant=variant), x, f"{route} {name} {variant}")


_CUDA_CHILD = """
import sys
import numpy as np
from numba import cuda
import refsim
data = np.load(sys.argv[1])
out = {}
for key in data.files:
    if key.startswith("x-"):
        _, name, mode, overflow = key.split("|")
        x = data[key]
        kwargs = {"overflow": overflow}
        if mode.startswith("sr"):
            kwargs.update(sr_bits=5, rbits=cuda.to_device(data["r-" + key[2:]]),
                          sr_variant=mode[3:] or "floor")
            mode = "sr"
        out[key] = refsim.quantize(cuda.to_device(x), name, mode, **kwargs).copy_to_host()
np.savez(sys.argv[2], **out)
"""


def test_cuda_simulator_matches_numpy(tmp_path):
    """The CUDA kernels under NUMBA_ENABLE_CUDASIM=1 (a child process: the simulator must be
    chosen before numba.cuda is imported), a few hundred inputs per case."""
    cases: dict[str, np.ndarray] = {}
    expected: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(3)
    for name in ("p3109_k8p1se", "p3109_k8p4ue", "p3109_k8p4sf"):
        fmt = get_format(name)
        x = boundary_values(fmt, np.float64)
        x = x[rng.choice(x.size, 48, replace=False)]
        for mode, overflow in (("rne", "default"), ("rto", "default"), ("rdn", "satfinite"),
                               ("sr", "default"), ("sr-half-even", "default")):
            key = f"x-|{name}|{mode}|{overflow}"
            cases[key] = x
            kwargs: dict = {"overflow": overflow}
            if mode.startswith("sr"):
                r = rng.integers(0, 32, x.size).astype(np.uint8)
                cases["r-" + key[2:]] = r
                kwargs.update(sr_bits=5, rbits=r, sr_variant=mode[3:] or "floor")
                mode = "sr"
            expected[key] = refsim.quantize(x, name, mode, **kwargs)
    np.savez(tmp_path / "in.npz", **cases)
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", _CUDA_CHILD, str(tmp_path / "in.npz"),
                           str(tmp_path / "out.npz")], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = np.load(tmp_path / "out.npz")
    assert set(got.files) == set(expected)
    for key, want in expected.items():
        assert_same(got[key], want, cases[key], f"cuda {key}")


def test_accumulation_into_p3109_formats_matches_the_exact_twin():
    """An accumulator and an output Cast in P3109 formats (the exact core's own rounding):
    precision 1's code-parity ties and rto, unsigned negatives to 0, the finite domain's
    saturation, against formats.exact_sum."""
    from refsim import AccumSpec, Cast, GemmSpec, matmul
    from refsim.formats.exact_sum import matmul_exact

    rng = np.random.default_rng(11)
    a = np.ldexp(rng.integers(-6, 7, (3, 24)).astype(np.float64), rng.integers(-3, 4, (3, 24)))
    b = np.ldexp(rng.integers(-6, 7, (24, 4)).astype(np.float64), rng.integers(-3, 4, (24, 4)))
    for acc_fmt, out_fmt, mode in (("p3109_k8p1se", "p3109_k8p1ue", "rne"),
                                   ("p3109_k8p1se", "p3109_k8p3uf", "rto"),
                                   ("p3109_k8p3sf", "p3109_k8p1se", "rto"),
                                   ("p3109_k6p3sf", "p3109_k8p4ue", "rna")):
        for out in (Cast(out_fmt, mode), None):
            spec = GemmSpec(acc=AccumSpec(acc_fmt, mode), out=out)
            got, want = matmul(a, b, spec).ravel(), matmul_exact(a, b, spec).ravel()
            assert_same(got, want, np.arange(got.size, dtype=np.float64),
                        f"{acc_fmt} {out} {mode} (output indices)")
