"""Golden vectors: written, read back, verified; a wrong candidate is caught."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from refsim import quantize
from refsim.validation.__main__ import main
from refsim.validation.golden import verify_golden, write_golden


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


# ---- user errors: one line, exit status 2 (1 means "mismatch") ----------------------------------
def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize(("args", "wanted"), [
    (["--seed", "-1"], "argument --seed: must be a non-negative integer; got '-1'"),
    (["--size", "-5"], "argument --size: must be a positive integer; got '-5'"),
    (["--sr-bits", "0"], "argument --sr-bits: must be a positive integer; got '0'"),
])
def test_golden_bad_numbers_name_the_flag(tmp_path, capsys, args, wanted):
    with pytest.raises(SystemExit) as stop:
        main(["golden", "--format", "e4m3fn", "--rounding", "rne", "--out", str(tmp_path),
              *args])
    assert stop.value.code == 2
    assert _error_line(capsys) == f"python -m refsim.validation golden: error: {wanted}"


def test_run_bad_max_size_names_the_flag(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--max-size", "-1"])
    assert stop.value.code == 2
    assert _error_line(capsys) == ("python -m refsim.validation: error: argument --max-size: "
                                   "must be a non-negative integer; got '-1'")


@pytest.mark.parametrize("under", [False, True], ids=["file", "under-a-file"])
def test_golden_out_that_is_a_file_is_a_one_line_error(tmp_path, capsys, under):
    blocker = tmp_path / "taken"
    blocker.write_text("")
    with pytest.raises(SystemExit) as stop:
        main(["golden", "--format", "e4m3fn", "--rounding", "rne", "--out",
              str(blocker / "g" if under else blocker)])
    assert stop.value.code == 2
    line = _error_line(capsys)
    assert line.startswith("python -m refsim.validation golden: error: argument --out: ")
    assert line.endswith("not a directory")


def test_golden_bad_format_is_status_2_not_1(tmp_path, capsys):
    assert main(["golden", "--format", "e9m9x", "--rounding", "rne", "--out",
                 str(tmp_path)]) == 2
    assert _error_line(capsys).startswith("python -m refsim.validation golden: error: ")


@pytest.fixture
def golden_dir(tmp_path, monkeypatch):
    out = tmp_path / "g"
    write_golden(out, "e5m2", "rne", size=64)
    (tmp_path / "kernels.py").write_text("from refsim import quantize\n\n"
                                         "def good(x):\n    return quantize(x, 'e5m2')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return out


@pytest.mark.parametrize(("candidate", "wanted"), [
    ("no_such_module:f", "candidate 'no_such_module:f': cannot import module 'no_such_module' "
                         "(No module named 'no_such_module')"),
    ("kernels:missing", "candidate 'kernels:missing': 'kernels' has no attribute 'missing'"),
    ("kernels", "candidate must be 'module:function'; got 'kernels'"),
])
def test_verify_bad_candidate_is_one_line_status_2(golden_dir, capsys, candidate, wanted):
    assert main(["verify", str(golden_dir), "--candidate", candidate]) == 2
    assert _error_line(capsys) == f"python -m refsim.validation verify: error: {wanted}"


@pytest.mark.parametrize("damage", ["no-rounding", "not-json", "a-list", "missing"])
def test_verify_bad_manifest_is_one_line_status_2(golden_dir, capsys, damage):
    path = golden_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    if damage == "no-rounding":
        del manifest["rounding"]
        path.write_text(json.dumps(manifest))
        wanted = "must give 'rounding' (str); it gives nothing"
    elif damage == "not-json":
        path.write_text("{")
        wanted = "cannot be read as JSON"
    elif damage == "a-list":
        path.write_text("[]")
        wanted = "must hold a JSON object; got a list"
    else:
        path.unlink()
        wanted = "does not exist"
    assert main(["verify", str(golden_dir), "--candidate", "kernels:good"]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"python -m refsim.validation verify: error: {path}") and wanted in line


def test_python_m_validation_user_error_prints_no_traceback(tmp_path):
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "refsim.validation", "verify",
                          str(tmp_path / "none"), "--candidate", "x:y"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"python -m refsim.validation verify: error: golden directory {str(tmp_path / 'none')!r} "
        "does not exist (or is not a directory)"]


@pytest.mark.parametrize(("args", "wanted"), [
    (["--rounding", "up"], "rounding must be one of"),
    (["--rounding", "rne", "--overflow", "clamp"], "overflow"),
    (["--rounding", "rne", "--sr-bits", "3"], "sr_bits"),
])
def test_golden_bad_request_leaves_no_folder(tmp_path, capsys, args, wanted):
    # A bad --rounding/--overflow/--sr-bits used to leave an empty --out folder behind.
    out = tmp_path / "g"
    assert main(["golden", "--format", "e4m3fn", "--out", str(out), *args]) == 2
    assert wanted in _error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("fmt", ["fp32", "int32", "e8m23"])
def test_golden_for_wide_formats(tmp_path, fmt):
    # "fp32 has 2^32 codes; tables are built for formats of at most 24 bits": the codes and
    # midpoints suites now sample codes of formats over 24 bits.
    out = tmp_path / fmt
    write_golden(out, fmt, "rne", size=256)
    with np.load(out / "golden.npz") as data:
        inputs, outputs = data["inputs"], data["outputs"]
    assert inputs.size > 1000
    np.testing.assert_array_equal(outputs.view(np.uint64),
                                  np.asarray(quantize(inputs, fmt), np.float64).view(np.uint64))
    if fmt != "int32":  # fp32 midpoints, and one float64 ulp either side, are there
        mids = inputs[np.isfinite(inputs) & (np.abs(inputs) < 1e30)]
        assert np.any(mids.astype(np.float32).astype(np.float64) != mids)
    assert main(["golden", "--format", fmt, "--rounding", "rtz", "--out", str(out / "x"),
                 "--suites", "specials", "codes", "--size", "32"]) == 0
    manifest = json.loads((out / "x" / "manifest.json").read_text())
    assert manifest["suites"] == ["specials", "codes"]


def test_verify_candidate_that_raises_has_its_own_status(golden_dir, tmp_path, capsys):
    # A RuntimeError gave a traceback and status 1 ("differs"); a ValueError status 2 with only
    # the candidate's message.
    (tmp_path / "broken.py").write_text(
        "def runtime(x):\n    raise RuntimeError('kernel launch failed')\n\n"
        "def value(x):\n    raise ValueError('bad shape')\n")
    assert main(["verify", str(golden_dir), "--candidate", "broken:runtime"]) == 3
    assert _error_line(capsys) == ("python -m refsim.validation verify: the candidate "
                                   "broken:runtime raised RuntimeError: kernel launch failed")
    assert main(["verify", str(golden_dir), "--candidate", "broken:value"]) == 3
    assert _error_line(capsys).endswith("the candidate broken:value raised ValueError: bad shape")
