"""The shape of the code: imports among refsim/, formats/ and validation/ point one way.

Every `import` and `from ... import` (module level and inside functions) is read with ast. The
rules (README "Layout", DESIGN.md): no import cycle between modules; no module takes another
module's private name (`_x`, imported or reached as `module._x`); production code (refsim/) never
imports the executable specification (refsim.formats.exact, exact_sum, exact_block,
exact_transform), which is what it is checked against; every import points down the LAYERS
(formats <- kernels <- params/specs <- backends <- public API <- nn <- factors/studies <-
validation <- cli): the scalar kernels take numbers (no params table), a spec module needs no
API module (specs does not import transforms); and validation reaches refsim through its public
API only (no kernels, backends or params).

Run as a script (`python tests/test_layers.py`) it prints every finding and exits 1 if any.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"refsim": "refsim", "formats": "refsim.formats", "validation": "refsim.validation"}
ORACLE = ("refsim.formats.exact", "refsim.formats.exact_sum", "refsim.formats.exact_block",
          "refsim.formats.exact_transform")


def _modules() -> dict[str, Path]:
    """Installed module name -> file, for every module of the three folders."""
    found = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _owner(name: str) -> str | None:
    """The project module a dotted import target lives in (a name inside it maps to it)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str) -> list[tuple[str, str | None]]:
    """(imported module, imported name or None) for every import statement of `module`."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.append((target, None) if target in MODULES else (base, alias.name))
    return found


def _private_attributes(module: str) -> list[str]:
    """`alias._name` where alias is another project module imported into `module`."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in MODULES:
                    aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                if f"{node.module}.{alias.name}" in MODULES:
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return [f"{module} <- {aliases[node.value.id]}.{node.attr}" for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id in aliases and aliases[node.value.id] != module
            and node.attr.startswith("_") and not node.attr.startswith("__")]


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for target, _ in _imports(module):
            owner = _owner(target)
            # a package re-exporting its own submodules is not a layer crossing
            if owner and owner != module and not owner.startswith(module + "."):
                edges[module].add(owner)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(edges[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return components


def test_the_checker_sees_the_project():
    assert {"refsim.kernels.core", "refsim.formats.exact", "refsim.validation.report"} <= set(
        MODULES)
    assert "refsim.kernels.core" in _edges()["refsim.kernels.accum_core"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle():
    assert _cycles(_edges()) == []


def test_no_private_name_taken_from_another_module():
    taken = [f"{module} <- {target}.{name}" for module in MODULES
             for target, name in _imports(module)
             if name and name.startswith("_") and not name.startswith("__")
             and _owner(target) not in (None, module)]
    taken += [hit for module in MODULES for hit in _private_attributes(module)]
    assert taken == []


def test_production_never_imports_the_executable_specification():
    production = [m for m in MODULES if m.startswith("refsim.")
                  and not m.startswith(("refsim.formats", "refsim.validation"))]
    uses = [f"{module} <- {target}" for module in production
            for target, _ in _imports(module) if _owner(target) in ORACLE]
    assert uses == []


# ---- layers --------------------------------------------------------------------------------------
LAYERS: tuple[tuple[str, ...], ...] = (
    ("refsim.formats",),
    ("refsim.kernels",),  # the scalar kernels: numbers in, numbers out
    ("refsim.params", "refsim.specs", "refsim.argtypes"),  # descriptions, and their translation
    ("refsim.backends",),
    ("refsim.quantize", "refsim.accumulate", "refsim.blocks", "refsim.scaling",
     "refsim.transforms", "refsim.scaled_gemm", "refsim.hardware", "refsim.torch_ops",
     "refsim.demo", "refsim"),  # the public API (and the package that re-exports it)
    ("refsim.nn",),
    ("refsim.torch_nn", "refsim.torch_emulate", "refsim.torch_emulate_conv", "refsim.factors"),
    ("refsim.studies",),
    ("refsim.validation",),
    ("refsim.cli", "refsim.__main__"),
)
"""Layers, lowest first: a module imports from its own layer or those below."""
PUBLIC_ONLY = {"refsim.validation": ("refsim.kernels", "refsim.backends", "refsim.params")}
"""Modules (by prefix) that reach refsim through its public API only: the prefixes they must
not import."""


def _layer(module: str) -> int | None:
    """The index in LAYERS of the longest prefix that names `module` (None: none does)."""
    best, found = -1, None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), i
    return found


def _upward(edges: dict[str, set[str]]) -> list[str]:
    """Every import that points up the LAYERS or past PUBLIC_ONLY, as 'module -> target'."""
    found = []
    for module, targets in sorted(edges.items()):
        for target in sorted(targets):
            own, other = _layer(module), _layer(target)
            if own is None or other is None:
                found.append(f"{module} -> {target} (not in LAYERS)")
            elif other > own:
                found.append(f"{module} -> {target} (layer {own} imports layer {other})")
            for prefix, banned in PUBLIC_ONLY.items():
                if module.startswith(prefix) and target.startswith(banned):
                    found.append(f"{module} -> {target} (not the public API)")
    return found


def test_the_layer_check_catches_each_kind():
    """The three seams this check was written for, as they once stood."""
    assert _upward({"refsim.kernels.lane": {"refsim.params"}}) == [
        "refsim.kernels.lane -> refsim.params (layer 1 imports layer 2)"]
    assert _upward({"refsim.specs": {"refsim.transforms"}}) == [
        "refsim.specs -> refsim.transforms (layer 2 imports layer 4)"]
    assert _upward({"refsim.validation.adapters": {"refsim.backends.torch_backend"}}) == [
        "refsim.validation.adapters -> refsim.backends.torch_backend (not the public API)"]
    assert _upward({"refsim.nn.train": {"refsim.specs", "refsim.accumulate"}}) == []


def test_every_module_has_a_layer():
    assert [m for m in MODULES if _layer(m) is None] == []


def test_imports_point_down_the_layers():
    assert _upward(_edges()) == []


def test_kernels_carriers_agree_with_params():
    """kernels.lane holds the two carriers as numbers; params.CARRIERS maps dtypes onto them."""
    from refsim.kernels.lane import CARRIER_OF, UTYPE_OF
    from refsim.params import CARRIERS

    for c_man, c_bias, utype in CARRIERS.values():
        assert UTYPE_OF[c_man] is utype and CARRIER_OF[utype] == (c_man, c_bias)
    assert len(UTYPE_OF) == len(CARRIER_OF) == len(CARRIERS)


if __name__ == "__main__":
    import sys

    findings = [f"cycle: {' <-> '.join(c)}" for c in _cycles(_edges())]
    findings += [f"layer: {hit}" for hit in _upward(_edges())]
    production = [m for m in MODULES if m.startswith("refsim.")
                  and not m.startswith(("refsim.formats", "refsim.validation"))]
    findings += [f"oracle in production: {m} <- {t}" for m in production
                 for t, _ in _imports(m) if _owner(t) in ORACLE]
    findings += [f"private: {m} <- {t}.{n}" for m in MODULES for t, n in _imports(m)
                 if n and n.startswith("_") and not n.startswith("__")
                 and _owner(t) not in (None, m)]
    findings += [f"private: {hit}" for m in MODULES for hit in _private_attributes(m)]
    print("\n".join(findings) or "layers: no finding")
    sys.exit(1 if findings else 0)
