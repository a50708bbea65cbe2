"""Cross-checks of fast paths and peer libraries against the reference; bit-level reports.

    from refsim.validation import compare
    report = compare(candidate_outputs, reference_outputs, inputs, fmt="e4m3fn")

`python -m refsim.validation` runs the whole suite (docs/validation.md).
"""

from refsim.validation.report import Mismatch, Report, compare

__all__ = ["Mismatch", "Report", "compare"]
