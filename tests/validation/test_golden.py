"""Golden vectors: written, read back, verified; a wrong candidate is caught."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from refsim import quantize
from validation.__main__ import main
from validation.golden import verify_golden, write_golden


def test_golden_round_trip_and_csv(tmp_path):
    manifest = write_golden(tmp_path, "e4m3fn", "rne", size=256)
    data = json.loads(manifest.read_text())
    assert data["format"]["name"] == "e4m3fn" and data["format"]["max"] == "0x1.c000000000000p+8"
    assert data["rounding"] == "rne" and data["seed"] == 0 and data["dtype"] == "float64"
    with np.load(tmp_path / "golden.npz") as z:
        inputs, outputs = z["inputs"], z["outputs"]
    assert inputs.size == data["count"]
    lines = (tmp_path / "golden.csv").read_text().splitlines()
    assert lines[0] == "index,input,output" and len(lines) == inputs.size + 1
    _index, x_hex, y_hex = lines[1].split(",")
    assert int(x_hex, 16) == int(inputs[:1].view(np.uint64)[0])
    assert int(y_hex, 16) == int(outputs[:1].view(np.uint64)[0])
    assert verify_golden(tmp_path, lambda x: quantize(x, "e4m3fn")).ok
    wrong = verify_golden(tmp_path, lambda x: quantize(x, "e4m3fn", "rna"))
    assert not wrong.ok and wrong.mismatched > 0


def test_tampered_files_are_refused(tmp_path):
    write_golden(tmp_path, "e5m2", "rtz", size=64)
    with open(tmp_path / "golden.csv", "a") as f:
        f.write("extra\n")
    with pytest.raises(ValueError, match="SHA-256"):
        verify_golden(tmp_path, lambda x: x)


def test_command_line_golden_and_verify(tmp_path, monkeypatch, capsys):
    out = tmp_path / "g"
    assert main(["golden", "--format", "bf16", "--rounding", "sr", "--out", str(out),
                 "--seed", "7", "--dtype", "float32", "--size", "128"]) == 0
    module = tmp_path / "my_kernels.py"
    module.write_text(textwrap.dedent("""
        from refsim import quantize

        def good(x, seed):
            return quantize(x, "bf16", "sr", seed=seed)

        def bad(x, seed):
            return quantize(x, "bf16", "rne")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["verify", str(out), "--candidate", "my_kernels:good"]) == 0
    assert capsys.readouterr().out.strip().endswith("1 passed, 0 failed")
    assert main(["verify", str(out), "--candidate", "my_kernels:bad"]) == 1
    assert "first mismatches" in capsys.readouterr().out
