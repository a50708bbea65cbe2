"""README.md's examples, executed and checked (as tests/formats/test_spec_cards.py checks
docs/formats.md): the first thing a new user copies must give what the README says.

The convention (README.md's "Quantize" section names it):
- Every ```python block runs, top to bottom, in a namespace of its own, unless the nearest
  non-blank line above its fence is `<!-- not run: REASON -->` (the reason is required).
- A statement whose last line ends in `# -> VALUE` is checked. VALUE is a Python literal
  (numbers, lists, tuples, dicts, strings; `nan` and `inf` allowed); the statement is an
  expression, or `name = ...` (the value assigned is checked). Numbers and nested lists of them
  compare bit for bit as float64 (exact for float16/32/64 and integer results): NaN equals NaN,
  -0.0 differs from 0.0, shapes must agree. Anything else compares with ==. Every runnable
  block shows at least one checked value.
- Every `refsim ...`, `python -m refsim.validation ...`, `python -m MODULE` and `make TARGET`
  line of the shell blocks (no language, sh, bash, shell) is parsed by its own argparse parser
  (or looked up): nothing runs. ```text blocks (the layout tree) are prose.
"""

from __future__ import annotations

import ast
import importlib.util
import io
import math
import re
import shlex
import tokenize
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from refsim.validation.bits import same_bits

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```\s*([\w+-]*)\s*$")
NOT_RUN = re.compile(r"<!--\s*not run:\s*(\S.*?)\s*-->")
CHECK = "# ->"


@dataclass(frozen=True)
class Block:
    """One fenced code block: its language, the README line of its first code line, its code,
    and the reason it is not run (None: it runs)."""

    lang: str
    line: int
    code: str
    not_run: str | None


def code_blocks(text: str) -> list[Block]:
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        assert end < len(lines), f"README.md:{i + 1}: a code fence that is never closed"
        above = next((line for line in reversed(lines[:i]) if line.strip()), "")
        marker = NOT_RUN.search(above)
        assert marker or "not run" not in above, (
            f"README.md:{i}: write `<!-- not run: REASON -->`, with a reason")
        blocks.append(Block(fence.group(1).lower(), i + 2, "\n".join(lines[i + 1:end]),
                            marker.group(1) if marker else None))
        i = end + 1
    return blocks


BLOCKS = code_blocks(README.read_text(encoding="utf-8"))
PYTHON = [b for b in BLOCKS if b.lang in ("python", "py", "python3")]
RUNNABLE = [b for b in PYTHON if b.not_run is None]


# ---- the checked values ---------------------------------------------------------------------
_LITERAL_NODES = (ast.Expression, ast.Constant, ast.List, ast.Tuple, ast.Dict, ast.UnaryOp,
                  ast.USub, ast.UAdd, ast.Load)


def literal(text: str, where: str) -> object:
    """A `# -> VALUE` literal: Python literals plus the names nan and inf."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise AssertionError(f"{where}: `{CHECK} {text}` is not a literal: {exc}") from None
    for node in ast.walk(tree):
        allowed = isinstance(node, _LITERAL_NODES) or (
            isinstance(node, ast.Name) and node.id in ("nan", "inf"))
        assert allowed, f"{where}: `{CHECK} {text}`: only literals, nan and inf"
    return eval(compile(tree, where, "eval"), {"__builtins__": {}},
                {"nan": math.nan, "inf": math.inf})


def numeric(value: object) -> bool:
    if isinstance(value, (list, tuple)):
        return len(value) > 0 and all(numeric(v) for v in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def same(actual: object, expected: object) -> bool:
    """Bit for bit as float64 for numbers (NaN as NaN, zeros by sign); == for the rest."""
    if not numeric(expected):
        return bool(actual == expected)
    got = np.asarray(actual)
    if got.dtype.kind not in "fiu":
        return False
    want = np.asarray(expected, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        got = got.astype(np.float64)  # exact for every float and for integers below 2^53
    return got.shape == want.shape and bool(same_bits(got, want).all())


def checks(block: Block) -> dict[int, str]:
    """{line in the block (1-based): VALUE text} of its `# -> VALUE` comments."""
    found = {}
    for token in tokenize.generate_tokens(io.StringIO(block.code).readline):
        if token.type == tokenize.COMMENT and token.string.startswith(CHECK):
            found[token.start[0]] = token.string[len(CHECK):].strip()
    return found


def run_block(block: Block) -> int:
    """Execute the block statement by statement, checking each `# -> VALUE`; returns how many
    values were checked. Tracebacks and messages give README.md line numbers."""
    tree = ast.parse(block.code)
    ast.increment_lineno(tree, block.line - 1)
    pending = {line + block.line - 1: text for line, text in checks(block).items()}
    namespace: dict[str, object] = {"__name__": "readme"}
    checked = 0
    for statement in tree.body:
        end = statement.end_lineno or statement.lineno
        inner = [line for line in pending if statement.lineno <= line < end]
        assert not inner, f"README.md:{inner[0]}: `{CHECK}` must end a statement"
        where = f"README.md:{end}"
        if end not in pending:
            exec(compile(ast.Module([statement], []), "README.md", "exec"), namespace)
            continue
        expected = literal(pending.pop(end), where)
        if isinstance(statement, ast.Expr):
            actual = eval(compile(ast.Expression(statement.value), "README.md", "eval"),
                          namespace)
        elif (isinstance(statement, ast.Assign) and len(statement.targets) == 1
              and isinstance(statement.targets[0], ast.Name)):
            exec(compile(ast.Module([statement], []), "README.md", "exec"), namespace)
            actual = namespace[statement.targets[0].id]
        else:
            raise AssertionError(f"{where}: a checked statement is an expression or "
                                 f"`name = ...`")
        assert same(actual, expected), f"{where}: the README shows {expected!r}, got {actual!r}"
        checked += 1
    assert not pending, f"README.md:{min(pending)}: `{CHECK}` outside any statement"
    return checked


@pytest.mark.parametrize("block", RUNNABLE, ids=[f"line{b.line}" for b in RUNNABLE])
def test_readme_python_block_runs_and_shows_true_values(block):
    assert run_block(block) > 0, (
        f"README.md:{block.line}: a runnable example shows at least one `{CHECK} VALUE`")


def test_every_python_block_runs_or_says_why_not():
    """The two examples (Quantize, Accumulate) run; a block may only be left out by name."""
    assert len(RUNNABLE) >= 2, [b.line for b in PYTHON]
    for block in PYTHON:
        assert block.not_run is None or block.not_run.strip(), block.line


def test_convention_catches_a_wrong_value_and_a_misplaced_check():
    """The checker fails on what it must fail on (so a green run means something)."""
    wrong = Block("python", 10, "import numpy as np\nnp.float32(1e-3)  # -> 0.001\n", None)
    with pytest.raises(AssertionError, match=r"README.md:11: the README shows 0.001"):
        run_block(wrong)
    right = Block("python", 1, "import numpy as np\nx = np.float32(1e-3)  # -> "
                  f"{float(np.float32(1e-3))!r}\n-np.zeros(2)  # -> [-0.0, -0.0]\n"
                  "np.array([np.nan, 1])  # -> [nan, 1]\n{'a': 1}  # -> {'a': 1}\n", None)
    assert run_block(right) == 4
    signed_zero = Block("python", 1, "import numpy as np\n-np.zeros(1)  # -> [0.0]\n", None)
    with pytest.raises(AssertionError, match="shows"):
        run_block(signed_zero)
    shape = Block("python", 1, "import numpy as np\nnp.ones((1, 2))  # -> [1, 1]\n", None)
    with pytest.raises(AssertionError, match="shows"):
        run_block(shape)
    inner = Block("python", 1, "x = (1,  # -> 1\n     2)\n", None)
    with pytest.raises(AssertionError, match="must end a statement"):
        run_block(inner)
    assert code_blocks("<!-- not run: needs a GPU -->\n```python\nboom()\n```\n")[0].not_run \
        == "needs a GPU"
    with pytest.raises(AssertionError, match="with a reason"):
        code_blocks("<!-- not run -->\n```python\nboom()\n```\n")


def test_readme_tested_versions_are_the_pins():
    """The README's "Tested versions" line names the versions constraints.txt pins."""
    text = " ".join(README.read_text(encoding="utf-8").split())
    line = text.split("Tested versions (constraints.txt):", 1)[1].split(". ", 1)[0]
    named = dict(re.findall(r"([A-Za-z_]+) (\d[\w.]*)", line))
    pins = dict(re.findall(r"^([\w.-]+)==(\S+)$", (ROOT / "constraints.txt").read_text(),
                           re.MULTILINE))
    assert {"numpy", "numba", "llvmlite", "scipy", "torch", "torchao", "ml_dtypes", "gfloat",
            "hypothesis"} <= set(named), line
    assert {name: pins.get(name) for name in named if name != "Python"} == {
        name: version for name, version in named.items() if name != "Python"}


# ---- the command lines ------------------------------------------------------------------------
SHELL = ("", "sh", "bash", "shell")


def command_lines() -> list[tuple[int, list[str]]]:
    """(README line, argv) of every command line in the non-Python code blocks."""
    found = []
    for block in BLOCKS:
        if block.lang not in SHELL:
            continue
        for offset, line in enumerate(block.code.splitlines()):
            argv = shlex.split(line, comments=True)
            if argv:
                found.append((block.line + offset, argv))
    return found


def parse_command(argv: list[str]) -> None:
    """Parse one README command line with the parser that would run it; nothing runs."""
    from refsim.cli import build_parser
    from refsim.validation.__main__ import _parser as validation_parser

    if argv[0] == "make":
        targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE)
        assert set(argv[1:]) <= set(targets), f"no make target {argv[1:]}"
    elif argv[:2] == ["refsim", "validate"]:
        validation_parser("refsim validate").parse_args(argv[2:])
    elif argv[0] == "refsim":
        build_parser().parse_args(argv[1:])
    elif argv[:3] == ["python", "-m", "refsim.validation"]:
        validation_parser("python -m refsim.validation").parse_args(argv[3:])
    elif argv[:2] == ["python", "-m"]:
        assert importlib.util.find_spec(argv[2]) is not None, f"no module {argv[2]}"
    else:
        raise AssertionError(f"a command the README test does not know: {argv}")


COMMANDS = command_lines()


def test_readme_names_its_commands():
    assert len(COMMANDS) >= 8, COMMANDS


@pytest.mark.parametrize(("line", "argv"), COMMANDS, ids=[f"line{n}" for n, _ in COMMANDS])
def test_readme_command_line_parses(line, argv, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)  # --out paths are checked against the file system
    try:
        parse_command(argv)
    except SystemExit as exc:  # argparse's error (status 2)
        raise AssertionError(f"README.md:{line}: {shlex.join(argv)}: "
                             f"{capsys.readouterr().err.strip()}") from exc
