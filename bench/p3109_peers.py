"""refsim.quantize against pychop and gfloat on the same requests, side by side in one process.

    python -m bench.p3109_peers [--log2n 18] [--repeat 5] [--threads 1]

Rows: pychop's Chop (its fastest path: LightChop on NumPy arrays, the best of three chunk sizes)
on fp16, bf16, e5m2 and e4m3
(rne, rtz, and its stochastic mode 5 against refsim's sr), pychop's p3109_quantize and gfloat's
round_ndarray on P3109 formats (rne, rtz, and P3109 StochasticA with 8 random bits, which refsim
takes as sr_bits=8 with the same caller-given bits). Each row times both on the same 2^log2n
inputs (standard normal x 8, float32 and float64), medians after a warm-up; the ratio is the
peer's time over refsim's. --threads sets Numba's threads for refsim (the peers are NumPy).
"""

from __future__ import annotations

import argparse
import warnings

import numba
import numpy as np

from bench.timing import median_seconds
from refsim import quantize
from refsim.formats import get_format

CHOP = {"fp16": (5, 10), "bf16": (8, 7), "e5m2": (5, 2), "e4m3": (4, 3)}
P3109_FORMATS = ("p3109_k8p4se", "p3109_k8p3ue", "p3109_k8p1se", "p3109_k6p3sf")
CHUNKS = (1 << 14, 1 << 16, 1 << 18)


def rows(x: np.ndarray, repeat: int) -> list[tuple[str, str, str, float, float]]:
    """(peer, format, mode, peer seconds, refsim seconds) for every request on x. refsim's
    times are taken first, before any peer runs: pychop's stochastic Chop leaves Dask work
    behind that slows whatever runs next on two cores (refsim's sr by 40x for a while)."""
    timed = _rows(x, repeat, refsim_only=True)
    return [(peer, fmt, mode, peer_s, ours_s) for (peer, fmt, mode, peer_s, _), (*_, ours_s)
            in zip(_rows(x, repeat, refsim_only=False), timed, strict=True)]


def _rows(x: np.ndarray, repeat: int, refsim_only: bool
          ) -> list[tuple[str, str, str, float, float]]:
    """rows(), timing only refsim (refsim_only) or only the peers (refsim's time then 0)."""
    import gfloat
    from gfloat.formats import format_info_p3109
    from gfloat.types import Domain, Signedness
    from pychop import Chop
    from pychop.p3109 import P3109Format, p3109_quantize

    out = []
    r8 = np.random.default_rng(1).integers(0, 256, x.size).astype(np.uint16)
    for fmt, (e, m) in CHOP.items():
        for mode, rmode in (("rne", 1), ("rtz", 4), ("sr", 5)):
            # pychop's fastest path: Chop (LightChop) with the best of three Dask chunk sizes
            # (its default, 800, costs about 20x more per element on NumPy arrays)
            if refsim_only:
                ours = median_seconds(lambda fmt=fmt, mode=mode: quantize(x, fmt, mode), repeat)
                out.append(("pychop Chop", fmt, mode, 0.0, ours))
                continue
            chops = [Chop(e, m, rmode=rmode, subnormal=True, chunk_size=size)
                     for size in CHUNKS]
            peer = min(median_seconds(lambda chop=chop: chop(x), repeat) for chop in chops)
            out.append(("pychop Chop", fmt, mode, peer, 0.0))
    modes = {"rne": ("nearest_even", gfloat.RoundMode.TiesToEven),
             "rtz": ("toward_zero", gfloat.RoundMode.TowardZero),
             "sr": ("stochastic_a", gfloat.RoundMode.StochasticFastest)}
    for name in P3109_FORMATS:
        fmt = get_format(name)
        spec = P3109Format(fmt.bits, fmt.man_bits + 1, fmt.signed,
                           "extended" if fmt.specials == "ext" else "finite")
        info = format_info_p3109(fmt.bits, fmt.man_bits + 1,
                                 Signedness.Signed if fmt.signed else Signedness.Unsigned,
                                 Domain.Extended if fmt.specials == "ext" else Domain.Finite)
        for mode, (pmode, gmode) in modes.items():
            sr = mode == "sr"
            extra = {"srbits": r8.astype(np.int64), "srnumbits": 8} if sr else {}
            kwargs = {"sr_bits": 8, "rbits": r8} if sr else {}

            def ours(name=name, mode=mode, kwargs=kwargs):
                return quantize(x, name, mode, **kwargs)

            if refsim_only:
                refsim_s = median_seconds(ours, repeat)
                out.append(("pychop p3109_quantize", name, mode, 0.0, refsim_s))
                out.append(("gfloat round_ndarray", name, mode, 0.0, refsim_s))
                continue
            peer = median_seconds(lambda spec=spec, pmode=pmode, extra=extra: p3109_quantize(
                x, spec, rounding=pmode, **extra), repeat)
            out.append(("pychop p3109_quantize", name, mode, peer, 0.0))
            g_extra = {"srbits": r8.astype(np.int64), "srnumbits": 8} if sr else {}
            peer = median_seconds(lambda info=info, gmode=gmode, g_extra=g_extra:
                                  gfloat.round_ndarray(info, x.astype(np.float64), gmode,
                                                       **g_extra), repeat)
            out.append(("gfloat round_ndarray", name, mode, peer, 0.0))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log2n", type=int, default=18)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    numba.set_num_threads(args.threads)
    n = 1 << args.log2n
    base = np.random.default_rng(0).standard_normal(n) * 8
    print(f"# 2^{args.log2n} elements, median of {args.repeat}, refsim on {args.threads} "
          "Numba thread(s); ns per element; ratio = peer time / refsim time")
    print("| peer | format | mode | input | peer ns/elem | refsim ns/elem | ratio |")
    print("|---|---|---|---|---|---|---|")
    for dtype in (np.float32, np.float64):
        x = base.astype(dtype)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            for peer, fmt, mode, peer_s, ours_s in rows(x, args.repeat):
                print(f"| {peer} | {fmt} | {mode} | {np.dtype(dtype).name} | "
                      f"{peer_s / n * 1e9:.1f} | {ours_s / n * 1e9:.2f} | "
                      f"{peer_s / ours_s:.0f}x |", flush=True)


if __name__ == "__main__":
    main()
