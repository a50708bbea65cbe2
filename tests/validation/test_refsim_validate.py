"""`refsim validate` is `python -m validation` under the refsim command."""

from __future__ import annotations

import re

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
