"""The type stub python/splitllm/_core.pyi against the built module splitllm._core.

Every public name of _core (and every public member of its classes) has a stub entry and the
stub names nothing that does not exist; the stub's parameters (names, keyword-only markers,
defaults) match the signatures pybind11 writes into each __doc__; and the stub keeps one section
per cpp/python/bind_*.cpp file, in module.cpp's order, holding the names that file binds.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import splitllm
from splitllm import _core

STUB = Path(_core.__file__).with_name("_core.pyi")
BIND_DIR = Path(__file__).resolve().parent.parent / "cpp" / "python"
SECTION = re.compile(r"^# --- (bind_\w+\.cpp) -+$")


def public(names) -> set[str]:
    return {n for n in names if not n.startswith("_")}


def stub_tree() -> ast.Module:
    return ast.parse(STUB.read_text(encoding="utf-8"), filename=str(STUB))


def stub_names(body: list[ast.stmt]) -> dict[str, ast.stmt]:
    """Name -> definition for the functions, classes and annotated/assigned names of a body."""
    out: dict[str, ast.stmt] = {}
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            out[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = node
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    out[t.id] = node
    return out


def stub_classes() -> dict[str, ast.ClassDef]:
    return {n: d for n, d in stub_names(stub_tree().body).items() if isinstance(d, ast.ClassDef)}


def core_classes() -> dict[str, type]:
    return {n: o for n, o in vars(_core).items() if not n.startswith("_") and isinstance(o, type)}


def own_members(cls: type) -> dict[str, object]:
    """Members the class gets from _core itself (not from object, pybind11_object, exceptions)."""
    out: dict[str, object] = {}
    for klass in reversed(cls.__mro__):
        if klass.__module__ == _core.__name__:
            out.update(vars(klass))
    return out


def test_stub_parses() -> None:
    tree = stub_tree()
    assert ast.get_docstring(tree)
    compile(tree, str(STUB), "exec")


def test_module_names_match() -> None:
    runtime = public(dir(_core))
    stub = public(stub_names(stub_tree().body)) - {"np", "Any"}
    assert not runtime - stub, f"missing from _core.pyi: {sorted(runtime - stub)}"
    assert not stub - runtime, f"in _core.pyi but not in _core: {sorted(stub - runtime)}"


@pytest.mark.parametrize("name", sorted(core_classes()))
def test_class_members_match(name: str) -> None:
    cls = core_classes()[name]
    node = stub_classes().get(name)
    assert node is not None, f"class {name} missing from _core.pyi"
    members = own_members(cls)
    stub = stub_names(node.body)
    runtime = public(members)
    assert not runtime - set(stub), f"{name}: missing from _core.pyi: {sorted(runtime - set(stub))}"
    assert not public(stub) - runtime, f"{name}: not in _core: {sorted(public(stub) - runtime)}"
    if "__init__" in members:
        assert "__init__" in stub, f"{name}.__init__ missing from _core.pyi"
    for attr in runtime:
        is_prop = isinstance(members[attr], property)
        d = stub[attr]
        if is_prop:
            ok = isinstance(d, ast.AnnAssign) or (
                isinstance(d, ast.FunctionDef) and any(_is_property(x) for x in d.decorator_list)
            )
            assert ok, f"{name}.{attr} is a property: an annotation or @property in the stub"
        else:
            assert isinstance(d, ast.FunctionDef) and not any(_is_property(x) for x in d.decorator_list), (
                f"{name}.{attr} is a method in _core"
            )


def test_exception_bases() -> None:
    """The stub's exception classes derive from what the module registers."""
    classes = stub_classes()
    for name, cls in core_classes().items():
        if not issubclass(cls, BaseException):
            continue
        bases = [ast.unparse(b) for b in classes[name].bases]
        assert bases == [cls.__base__.__name__], (name, bases)


def _is_property(dec: ast.expr) -> bool:
    return isinstance(dec, ast.Name) and dec.id == "property"


# --- signatures ------------------------------------------------------------------------------


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[tuple[str, str, object]]:
    """(name, kind, default) per parameter; kind is "pos" or "kw"; default is a value or `inspect._empty`."""
    a = fn.args
    pos = a.posonlyargs + a.args
    pos_defaults = [inspect.Parameter.empty] * (len(pos) - len(a.defaults)) + list(a.defaults)
    out = [(p.arg, "pos", _literal(d)) for p, d in zip(pos, pos_defaults, strict=True)]
    out += [(p.arg, "kw", _literal(d)) for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True)]
    assert a.vararg is None and a.kwarg is None, fn.name
    return out


def _literal(d: ast.expr | object | None) -> object:
    if d is None or d is inspect.Parameter.empty:
        return inspect.Parameter.empty
    return ast.literal_eval(d)  # 1 == 1.0: an int default in pybind's text matches a float stub's


def _runtime_signature(name: str, obj: object) -> ast.FunctionDef | None:
    """The first line of a pybind11 __doc__ ("name(a: T, *, b: T = 1) -> R") as a def, or None."""
    doc = getattr(obj, "__doc__", None) or ""
    first = doc.lstrip().split("\n", 1)[0]
    if not first.startswith(name + "(") or "Overloaded function" in doc:
        return None
    src = f"def {first.split(' -> ')[0]}: pass"
    fn = ast.parse(src).body[0]
    assert isinstance(fn, ast.FunctionDef)
    return fn


def _callables() -> list[tuple[str, object, ast.FunctionDef]]:
    """(qualified name, runtime object, stub def) for each function, method and __init__."""
    tree_names = stub_names(stub_tree().body)
    out = []
    for name in public(dir(_core)):
        obj = getattr(_core, name)
        node = tree_names.get(name)
        if isinstance(obj, type):
            if not isinstance(node, ast.ClassDef):
                continue
            members = stub_names(node.body)
            for attr, value in own_members(obj).items():
                if (attr.startswith("_") and attr != "__init__") or isinstance(value, property):
                    continue
                d = members.get(attr)
                if isinstance(d, ast.FunctionDef):
                    out.append((f"{name}.{attr}", value, d))
        elif callable(obj) and isinstance(node, ast.FunctionDef):
            out.append((name, obj, node))
    return out


def test_signatures_match() -> None:
    checked = 0
    problems = []
    for qualname, obj, node in _callables():
        fn = _runtime_signature(qualname.rsplit(".", 1)[-1], obj)
        if fn is None:
            continue
        checked += 1
        want, have = _params(fn), _params(node)
        if want != have:
            problems.append(f"{qualname}:\n  _core: {want}\n  stub:  {have}")
    assert not problems, "stub signatures differ from pybind11's:\n" + "\n".join(problems)
    assert checked > 40  # the docs were parsed, not skipped


# --- sections --------------------------------------------------------------------------------


def _section_starts() -> list[tuple[int, str]]:
    """(line number, bind file) of each section comment, in the stub's order."""
    lines = STUB.read_text(encoding="utf-8").splitlines()
    return [(i + 1, m.group(1)) for i, line in enumerate(lines) if (m := SECTION.match(line))]


def _stub_sections() -> dict[str, set[str]]:
    """bind file -> names defined under its section comment."""
    starts = _section_starts()
    sections: dict[str, set[str]] = {}
    for node in stub_tree().body:
        names = stub_names([node])
        if not names:
            continue
        owner = [f for line, f in starts if line <= node.lineno]
        if owner:
            sections.setdefault(owner[-1], set()).update(names)
    return {f: sections.get(f, set()) for _, f in starts}


def _bound_names(src: str) -> set[str]:
    pattern = (
        r'm\.def\(\s*"(\w+)"'
        r'|m\.attr\(\s*"(\w+)"\s*\)'
        r'|class_<[^;]*?>\(\s*m\s*,\s*"(\w+)"'
        r'|register_exception<[^;]*?>\(\s*m\s*,\s*"(\w+)"'
    )
    return {next(g for g in m.groups() if g) for m in re.finditer(pattern, src)}


@pytest.mark.skipif(not (BIND_DIR / "module.cpp").is_file(), reason="no cpp/python sources")
def test_sections_follow_bind_files() -> None:
    order = re.findall(r"\bbind_(\w+)\(m\)", (BIND_DIR / "module.cpp").read_text(encoding="utf-8"))
    files = [f"bind_{o}.cpp" for o in order]
    have = [f for _, f in _section_starts()]
    assert have == files, "one stub section per bind_*.cpp file, in module.cpp's order"
    sections = _stub_sections()
    for f in files:
        bound = _bound_names((BIND_DIR / f).read_text(encoding="utf-8"))
        assert bound, f"no bindings found in {f}"
        assert sections[f] == bound, (f, sorted(bound - sections[f]), sorted(sections[f] - bound))


# --- submodules ------------------------------------------------------------------------------


def test_quants_reachable_from_package() -> None:
    """`import splitllm; splitllm.quants` works in a fresh interpreter (nothing else imported it)."""
    assert splitllm.quants.quantize is not None
    assert "quants" in splitllm.__all__
    root = str(Path(splitllm.__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    code = "import splitllm; print(splitllm.quants.qtype_info('q4_k').block_size)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "256"
