"""`refsim study` on a user's mistakes and on Ctrl-C: one line and a documented exit status,
never a traceback."""

from __future__ import annotations

import re

import pytest

from refsim.cli import INTERRUPTED, main
from refsim.studies import accumulation

TINY = ["--set", "log2_k=[4]", "--set", 'formats=["bf16"]', "--set", 'roundings=["rne"]',
        "--set", 'orders=["sequential"]', "--set", "trials=1", "--set", "vrr_log2_k=[4]",
        "--set", "vrr_mantissas=[2]", "--set", "vrr_trials=2"]


def _last_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("args", [["accumulation"], ["all"], ["profile", "--model", "mlp"]],
                         ids=["study", "all", "profile"])
@pytest.mark.parametrize("under", [False, True], ids=["file", "under-a-file"])
def test_out_that_is_a_file_is_a_one_line_error(tmp_path, capsys, args, under):
    blocker = tmp_path / "taken"
    blocker.write_text("")
    out = blocker / "x" if under else blocker
    with pytest.raises(SystemExit) as stop:
        main(["study", *args, "--out", str(out), "--quiet"])
    assert stop.value.code == 2
    line = _last_error_line(capsys)
    assert line.startswith("refsim study: error: argument --out: ")
    assert line.endswith("not a directory")


def test_default_out_under_a_file_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reports").write_text("")  # the default reports/profile lies under a file
    assert main(["study", "profile", "--model", "mlp"]) == 2
    assert _last_error_line(capsys).startswith("refsim study: error: [Errno")


@pytest.mark.parametrize(("flag", "value"), [("--workers", "0"), ("--batch-size", "-5")])
def test_bad_numbers_name_the_flag(capsys, flag, value):
    with pytest.raises(SystemExit) as stop:
        main(["study", "profile", flag, value])
    assert stop.value.code == 2
    assert _last_error_line(capsys) == (f"refsim study: error: argument {flag}: must be a "
                                        f"positive integer; got '{value}'")


def test_ctrl_c_says_how_many_runs_are_cached_and_that_a_rerun_resumes(tmp_path, capsys,
                                                                         monkeypatch):
    real, calls = accumulation.run_one, []

    def interrupted_at_the_third_run(config):
        calls.append(config)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(config)

    monkeypatch.setattr(accumulation, "run_one", interrupted_at_the_third_run)
    out = tmp_path / "acc"
    try:
        code = main(["study", "accumulation", "--quick", "--out", str(out), "--workers", "1",
                     "--no-plots", "--quiet", *TINY])
    except KeyboardInterrupt:  # escaping, it would stop the whole test session
        pytest.fail("Ctrl-C escaped `refsim study` (a traceback for the user)")
    assert code == INTERRUPTED == 130
    line = _last_error_line(capsys)
    match = re.fullmatch(r"refsim study: interrupted: 2 of the (\d+) runs of study "
                         r"'accumulation' are cached in (.*); run the same command again to "
                         r"resume", line)
    assert match and int(match[1]) >= 3 and match[2] == str(out / "cache"), line
    monkeypatch.setattr(accumulation, "run_one", real)
    assert main(["study", "accumulation", "--quick", "--out", str(out), "--workers", "1",
                 "--no-plots", "--quiet", *TINY]) == 0
    assert f"{match[1]} runs (2 cached)" in capsys.readouterr().out
