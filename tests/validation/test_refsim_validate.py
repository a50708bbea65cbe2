"""`refsim validate` is `python -m refsim.validation` under the refsim command."""

from __future__ import annotations

import json
import re

import pytest

from refsim.cli import main


def test_refsim_validate_runs_the_suite(capsys):
    code = main(["validate", "--peers", "ml_dtypes", "--suites", "codes", "--dtypes", "float32",
                 "--quiet"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert code == 0
    assert re.fullmatch(r"[1-9][0-9]* passed, 0 failed", last), last


def test_refsim_validate_reports_bad_input(capsys):
    assert main(["validate", "--peers", "no-such-peer", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "refsim validate: error" in err and "no-such-peer" in err


def test_refsim_validate_verify_user_errors_are_one_line_status_2(tmp_path, capsys,
                                                                  monkeypatch):
    out = tmp_path / "g"
    assert main(["validate", "golden", "--format", "e5m2", "--rounding", "rtz", "--out", str(out),
                 "--size", "64"]) == 0
    (tmp_path / "kern.py").write_text("def f(x):\n    return x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    capsys.readouterr()
    for candidate, wanted in [("nomod:f", "cannot import module 'nomod'"),
                              ("kern:g", "'kern' has no attribute 'g'")]:
        assert main(["validate", "verify", str(out), "--candidate", candidate]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert err.startswith("refsim validate verify: error: ") and wanted in err
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["rounding"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main(["validate", "verify", str(out), "--candidate", "kern:f"]) == 2
    assert "must give 'rounding' (str); it gives nothing" in capsys.readouterr().err


def test_refsim_validate_golden_out_file_names_the_flag(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    with pytest.raises(SystemExit) as stop:
        main(["validate", "golden", "--format", "e5m2", "--rounding", "rtz", "--out",
              str(tmp_path / "f")])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"refsim validate golden: error: argument --out: {str(tmp_path / 'f')!r} is a file, "
        "not a directory")
