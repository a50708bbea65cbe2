"""Adapters: every implementation the suite checks, as a function of a NumPy array.

Usage rules: an Adapter rounds a float32 or float64 array to one format with one rounding and
returns the values in the input's dtype; `reference` is refsim.quantize with the same request.
A peer's documented differences (docs/validation.md, ../REFERENCES "Peer behaviours") are a
`known` function of (inputs, peer output, reference output) returning the mask where a
difference is expected, with its reason; anything else that differs is a failure. A peer that
cannot be imported is listed by `adapters()` among the skipped, with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from formats import FloatFormat, get_format
from validation._refsim import quantize, quantize_blocks, torch_ops_on_cpu

__all__ = ["Adapter", "adapters"]

Known = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
ROUNDINGS_ALL = ("rne", "rna", "rtz", "rup", "rdn", "rto", "sr")
SEED = 20240601


@dataclass(frozen=True)
class Adapter:
    """One implementation of one (format, rounding) request.

    peer: the implementation's name; fmt, rounding, overflow: the refsim request it is held to;
    dtypes: the input dtypes it takes; run: the implementation; known: documented differences
    (mask function) and known_reason their one-line explanation.
    """

    peer: str
    fmt: str
    rounding: str
    run: Callable[[np.ndarray], np.ndarray]
    dtypes: tuple[str, ...] = ("float32", "float64")
    overflow: str = "default"
    known: Known | None = None
    known_reason: str = ""
    seed: int = 0
    reference_run: Callable[[np.ndarray], np.ndarray] | None = None
    element: str | None = None  # a block format's element: the format of the input suites

    @property
    def suite_format(self) -> str:
        return self.element or self.fmt

    @property
    def name(self) -> str:
        return f"{self.peer} {self.fmt}/{self.rounding}"

    def reference(self, x: np.ndarray) -> np.ndarray:
        """refsim.quantize of the same request (the golden reference), or reference_run."""
        if self.reference_run is not None:
            return self.reference_run(x)
        return np.asarray(quantize(x, self.fmt, self.rounding, overflow=self.overflow,
                                   seed=self.seed))


# ---- known differences --------------------------------------------------------------------------
def _double_rounded(fmt: str, rounding: str = "rne", overflow: str = "default") -> Known:
    """Where the peer gives refsim's result for the input first rounded to float32 (RNE): the
    peer converts float64 through float32."""
    def mask(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
        if x.dtype != np.float64:
            return np.zeros(x.shape, bool)
        with np.errstate(over="ignore", invalid="ignore"):
            via32 = quantize(x.astype(np.float32), fmt, rounding, overflow=overflow)
        via = via32.astype(np.float64)
        return (via == got) | (np.isnan(via) & np.isnan(got))
    return mask


def _either(*masks: Known) -> Known:
    def mask(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
        out = np.zeros(x.shape, bool)
        for each in masks:
            out |= each(x, got, expected)
        return out
    return mask


def _saturates(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """The peer gives +-max where refsim gives NaN or Inf for a non-NaN input (overflow)."""
    finite_max = np.nanmax(np.abs(np.where(np.isfinite(got), got, np.nan))) if got.size else 0
    return ~np.isnan(x) & ~np.isfinite(expected) & (np.abs(got) == finite_max)


def _nan_to_zero(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    return np.isnan(x) & (got == 0)


# ---- peers ---------------------------------------------------------------------------------------
def _refsim_torch(device: str) -> list[Adapter]:
    import torch

    def make(fmt: str, rounding: str) -> Callable[[np.ndarray], np.ndarray]:
        def run(x: np.ndarray) -> np.ndarray:
            with torch_ops_on_cpu():
                out = quantize(torch.from_numpy(x).to(device), fmt, rounding, seed=SEED)
            return np.asarray(out.cpu().numpy())
        return run

    formats = ("e4m3fn", "e5m2", "e2m1fn", "e8m0fnu", "bf16", "fp16", "int8")
    return [Adapter(f"refsim-torch-{device}", fmt, rounding, make(fmt, rounding), seed=SEED)
            for fmt in formats for rounding in ROUNDINGS_ALL]


_TORCH_DTYPES = {"e4m3fn": "float8_e4m3fn", "e5m2": "float8_e5m2",
                 "e4m3fnuz": "float8_e4m3fnuz", "e5m2fnuz": "float8_e5m2fnuz",
                 "e8m0fnu": "float8_e8m0fnu", "bf16": "bfloat16", "fp16": "float16"}


def _e8m0_torch(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """torch's e8m0fnu cast keeps the exponent of |x| and drops the sign; zero and values below
    2^-127 give 2^-127 (refsim: NaN for negatives and zero, as the format has neither)."""
    return (np.signbit(x) | (np.abs(x) < 2.0**-127)) & ~np.isnan(x)


def _torch_casts() -> list[Adapter]:
    import torch

    def make(dtype_name: str) -> Callable[[np.ndarray], np.ndarray]:
        dtype = getattr(torch, dtype_name)

        def run(x: np.ndarray) -> np.ndarray:
            t = torch.from_numpy(x)
            return np.asarray(t.to(dtype).to(t.dtype).numpy())
        return run

    out = []
    for fmt, dtype_name in _TORCH_DTYPES.items():
        if not hasattr(torch, dtype_name):
            continue
        masks: list[Known] = [_double_rounded(fmt)]
        reasons = ["converts float64 through float32 (double rounding)"]
        if fmt == "e4m3fn":
            masks.append(_saturates)
            reasons.append("saturates overflow and Inf to +-448 (refsim default: NaN)")
        if fmt == "e8m0fnu":
            masks += [_e8m0_torch, _e8m0_ml_dtypes]
            reasons.append("drops the sign, maps 0 and |x| < 2^-127 to 2^-127, rounds float32 "
                           "subnormals above 2^-127 up to 2^-126")
        out.append(Adapter("torch-cast", fmt, "rne", make(dtype_name), known=_either(*masks),
                           known_reason="; ".join(reasons)))
    return out


_ML_DTYPES = {"bf16": "bfloat16", "e5m2": "float8_e5m2", "e4m3": "float8_e4m3",
              "e3m4": "float8_e3m4", "e4m3fn": "float8_e4m3fn", "e4m3fnuz": "float8_e4m3fnuz",
              "e5m2fnuz": "float8_e5m2fnuz", "e4m3b11fnuz": "float8_e4m3b11fnuz",
              "e3m2fn": "float6_e3m2fn", "e2m3fn": "float6_e2m3fn", "e2m1fn": "float4_e2m1fn",
              "e8m0fnu": "float8_e8m0fnu"}


def _e8m0_ml_dtypes(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """ml_dtypes sends float32 subnormals above 2^-127 up to 2^-126 in e8m0fnu."""
    return (np.abs(x) > 2.0**-127) & (np.abs(x) < 2.0**-126)


def _ml_dtypes() -> list[Adapter]:
    import ml_dtypes

    def make(type_name: str) -> Callable[[np.ndarray], np.ndarray]:
        dtype = getattr(ml_dtypes, type_name)

        def run(x: np.ndarray) -> np.ndarray:
            with np.errstate(over="ignore", invalid="ignore"):
                return np.asarray(x.astype(dtype).astype(x.dtype))
        return run

    out = []
    for fmt, type_name in _ML_DTYPES.items():
        if not hasattr(ml_dtypes, type_name):
            continue
        masks: list[Known] = [_double_rounded(fmt)]
        reasons = ["converts float64 through float32 (double rounding)"]
        if not get_format(fmt).has_nan:
            masks.append(_nan_to_zero)
            reasons.append("maps NaN to +-0 in formats without NaN")
        if fmt == "e8m0fnu":
            masks.append(_e8m0_ml_dtypes)
            reasons.append("rounds float32 subnormals above 2^-127 up to 2^-126")
        out.append(Adapter("ml_dtypes", fmt, "rne", make(type_name), known=_either(*masks),
                           known_reason="; ".join(reasons)))
    return out


_GFLOAT_FORMATS = {"e4m3fn": "format_info_ocp_e4m3", "e5m2": "format_info_ocp_e5m2",
                   "e2m1fn": "format_info_ocp_e2m1", "e2m3fn": "format_info_ocp_e2m3",
                   "e3m2fn": "format_info_ocp_e3m2", "bf16": "format_info_bfloat16",
                   "fp16": "format_info_binary16"}


def _gfloat() -> list[Adapter]:
    import gfloat
    from gfloat import formats as gformats

    modes = {"rne": gfloat.RoundMode.TiesToEven, "rna": gfloat.RoundMode.TiesToAway,
             "rtz": gfloat.RoundMode.TowardZero, "rup": gfloat.RoundMode.TowardPositive,
             "rdn": gfloat.RoundMode.TowardNegative}

    def make(info: object, mode: object, finite: bool) -> Callable[[np.ndarray], np.ndarray]:
        def run(x: np.ndarray) -> np.ndarray:
            # gfloat refuses formats without Inf and NaN unless sat=True (refsim saturates
            # there too), and refuses NaN input then: NaN is passed through by the adapter.
            values = x.astype(np.float64)
            nan = np.isnan(values)
            with np.errstate(over="ignore", invalid="ignore"):
                out = np.asarray(gfloat.round_ndarray(info, np.where(nan, 0.0, values), mode,
                                                      sat=finite))
                return np.where(nan, values, out).astype(x.dtype)
        return run

    out = []
    for fmt, info_name in _GFLOAT_FORMATS.items():
        finite = not get_format(fmt).has_nan and not get_format(fmt).has_inf
        for rounding, mode in modes.items():
            out.append(Adapter("gfloat", fmt, rounding,
                               make(getattr(gformats, info_name), mode, finite),
                               known=_inf_to_nan, known_reason="an infinite input in a format "
                               "without Inf gives NaN in every mode (refsim: an overflow)"))
    return out


def _inf_to_nan(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    return np.isinf(x) & np.isnan(got)


def _ties(fmt: str) -> Known:
    """Where rounding ties away from zero gives another result than ties to even."""
    def mask(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
        away = quantize(x, fmt, "rna")
        return (away == got) & (away != expected)
    return mask


def _nan_inf_to_max(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    return np.isnan(x) & np.isfinite(got)


def _unsigned_zero(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """The peer gives +0 where refsim gives -0 (negative zero and negative underflow)."""
    return (expected == 0) & np.signbit(expected) & (got == 0) & ~np.signbit(got)


def _subnormal_one_step(fmt: str) -> Known:
    """Where the input lies in the format's subnormal range and the peer is one step off."""
    fmt_obj = get_format(fmt)

    def mask(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
        assert isinstance(fmt_obj, FloatFormat)
        step = fmt_obj.min_subnormal
        with np.errstate(invalid="ignore"):
            return (np.abs(x) < fmt_obj.min_normal) & (np.abs(got - expected) == step)
    return mask


def _qtorch() -> list[Adapter]:
    import torch
    from qtorch.quant import float_quantize

    def run(x: np.ndarray) -> np.ndarray:
        out = float_quantize(torch.from_numpy(x), 4, 3, rounding="nearest")
        return np.asarray(out.numpy())

    # QPyTorch reserves no code for Inf or NaN: e4m3 with max 480, which refsim spells
    # FloatFormat(4, 3, specials="none") ("e4m3fin"); that format always saturates.
    fmt = FloatFormat(4, 3, specials="none").name
    return [Adapter("qtorch", fmt, "rne", run, dtypes=("float32",),
                    known=_either(_ties(fmt), _nan_inf_to_max, _unsigned_zero,
                                  _subnormal_one_step(fmt)),
                    known_reason="rounds ties away from zero; maps NaN to a finite value; "
                                 "gives +0 for -0 and negative underflow; rounds some inputs "
                                 "just below a tie up in the subnormal range")]


def _torchao_mx() -> list[Adapter]:
    import torch
    from torchao.prototype.mx_formats.mx_tensor import to_mx

    def blocks(x: np.ndarray) -> tuple[np.ndarray, int]:
        """x padded with zeros to whole blocks of 32 (a zero changes no block's scale, and
        refsim scales a short last block alone: the same thing)."""
        pad = -x.size % 32
        return np.concatenate((x, np.zeros(pad, x.dtype))), x.size

    def make(elem: object) -> Callable[[np.ndarray], np.ndarray]:
        def run(x: np.ndarray) -> np.ndarray:
            padded, n = blocks(x)
            scale, data = to_mx(torch.from_numpy(padded), elem, 32)
            values = data.float().reshape(-1, 32) * scale.float().reshape(-1, 1)
            return np.asarray(values.reshape(-1).numpy()[:n])
        return run

    def reference(name: str) -> Callable[[np.ndarray], np.ndarray]:
        def run(x: np.ndarray) -> np.ndarray:
            padded, n = blocks(x)
            return np.asarray(quantize_blocks(padded, name))[:n]
        return run

    def special_blocks(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
        """Blocks that hold an Inf or NaN, where refsim gives NaN (the block's scale is NaN)."""
        padded, n = blocks(x)
        bad = ~np.isfinite(padded.reshape(-1, 32)).all(axis=1)
        return np.repeat(bad, 32)[:n] & np.isnan(expected)

    return [Adapter("torchao-mx", name, "rne", make(elem), dtypes=("float32",),
                    reference_run=reference(name), element=element, known=special_blocks,
                    known_reason="a block holding Inf or NaN: Inf elements stay Inf, the others "
                                 "become 0 (refsim: the whole block is NaN, its scale NaN)")
            for name, elem, element in (("mxfp8_e4m3", torch.float8_e4m3fn, "e4m3fn"),
                                        ("mxfp8_e5m2", torch.float8_e5m2, "e5m2"))]


PEERS: dict[str, Callable[[], list[Adapter]]] = {
    "refsim-torch-cpu": lambda: _refsim_torch("cpu"),
    "torch-cast": _torch_casts,
    "ml_dtypes": _ml_dtypes,
    "gfloat": _gfloat,
    "qtorch": _qtorch,
    "torchao-mx": _torchao_mx,
}


def adapters(peers: tuple[str, ...] | None = None) -> tuple[list[Adapter], dict[str, str]]:
    """The adapters of the installed peers, and {peer: reason} for those that cannot run."""
    found: list[Adapter] = []
    skipped: dict[str, str] = {}
    names = list(PEERS) if peers is None else list(peers)
    try:
        import torch
        if torch.cuda.is_available() and (peers is None or "refsim-torch-cuda" in names):
            found.extend(_refsim_torch("cuda"))
        elif peers is None:
            skipped["refsim-torch-cuda"] = "no CUDA device"
    except ImportError:
        pass
    for name in names:
        if name not in PEERS:
            if name != "refsim-torch-cuda":
                raise ValueError(f"peer must be one of {', '.join(PEERS)}; got {name!r}")
            continue
        try:
            found.extend(PEERS[name]())
        except Exception as exc:  # an import or build failure: report, do not hide
            skipped[name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    return found, skipped
