"""`make run`: the named formats, and a worked quantization in every rounding mode."""

from __future__ import annotations

import numpy as np

from refsim import quantize
from refsim.formats import NAMED, FloatFormat
from refsim.formats.policy import ROUNDINGS


def format_table() -> str:
    """One line per named format: bits, bias, max, min normal, min subnormal, Inf, NaN."""
    lines = [f"{'format':<12} {'bits':>4} {'bias':>5} {'max':>12} {'min normal':>12} "
             f"{'min subnormal':>14} {'Inf':>4} {'NaN':>4}"]
    for name, fmt in NAMED.items():
        if isinstance(fmt, FloatFormat):
            lines.append(
                f"{name:<12} {fmt.bits:>4} {fmt.bias:>5} {fmt.max:>12.5g} {fmt.min_normal:>12.5g} "
                f"{fmt.min_subnormal:>14.5g} {'yes' if fmt.has_inf else 'no':>4} "
                f"{'yes' if fmt.has_nan else 'no':>4}"
            )
        else:
            lines.append(f"{name:<12} {fmt.bits:>4} {'':>5} {fmt.max:>12.5g} {'(integer)':>12}")
    return "\n".join(lines)


def worked_example(fmt_name: str = "e4m3fn") -> str:
    """A few telling inputs rounded to `fmt_name` in every mode, with codes in hex."""
    fmt = NAMED[fmt_name]
    x = np.array([1.0625, 1.1875, -1.0625, 464.0, 465.0, 1e-3, -431.99999999999994, np.inf],
                 np.float64)
    header = f"{'x':>22} " + " ".join(f"{mode:>13}" for mode in ROUNDINGS)
    lines = [f"{fmt_name}: x rounded once from its exact float64 value (sr: seed 0)", header]
    results = {mode: quantize(x, fmt, mode) for mode in ROUNDINGS}
    for i, value in enumerate(x):
        cells = []
        for mode in ROUNDINGS:
            y = results[mode][i]
            code = int(fmt.encode(np.array([y]))[0])
            cells.append(f"{y:g}/{code:02x}")
        lines.append(f"{float(value)!r:>22} " + " ".join(f"{c:>13}" for c in cells))
    lines.append("saturate: " + ", ".join(
        f"{v!r} -> {quantize(float(v), fmt, overflow='saturate'):g}" for v in (465.0, np.inf)))
    return "\n".join(lines)


def main() -> None:
    print("refsim: named formats\n")
    print(format_table())
    print()
    print(worked_example())


if __name__ == "__main__":
    main()
