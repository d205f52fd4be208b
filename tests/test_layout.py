"""The house rules of src/ppo_core, checked on the source itself (ast, nothing imported):
no import circle (imports inside functions count), no module reaching another
subpackage's underscored names, and no env id compared with "metadrive" outside envs/."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "ppo_core"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules():
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def _imports(name: str, path: Path):
    """(imported module, [names taken from it], line) for every import of ``path``, also inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, [a.name for a in node.names], node.lineno


def _resolve(target: str, names, modules):
    """The ppo_core modules an import statement loads (a ``from pkg import submodule`` loads it)."""
    out = []
    if target in modules:
        out.append(target)
    for n in names:
        if f"{target}.{n}" in modules:
            out.append(f"{target}.{n}")
    return out


def test_no_import_circle_in_src():
    modules = _modules()
    graph = {m: set() for m in modules}
    for m, p in modules.items():
        for target, names, _ in _imports(m, p):
            for dep in _resolve(target, names, modules):
                if dep != m and not m.startswith(dep + "."):  # a submodule's own package is loaded anyway
                    graph[m].add(dep)
    # package __init__ files that only hand names on are the package's face; a circle through
    # one of them (pkg/__init__ -> pkg.a -> pkg/__init__) is how Python packages work
    for m in graph:
        graph[m] = {d for d in graph[m] if not (modules[d].name == "__init__.py" and m.startswith(d + "."))}
    state, stack, circles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                circles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def _subpackage(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else module


def test_no_module_reaches_another_modules_underscored_names():
    modules = _modules()
    bad = []
    for m, p in modules.items():
        if Path(p).name.startswith("_") and Path(p).name != "__init__.py":
            continue  # a private module may use private names
        for target, names, line in _imports(m, p):
            if not target.startswith("ppo_core"):
                continue
            for n in names:
                if not n.startswith("_") or n == "__version__":
                    continue
                folder = SRC.joinpath(*target.split("."))
                if f"{target}.{n}" in modules or any(folder.glob(f"{n}.*")):
                    continue  # a private module imported as a module (ppo_core._core, compiled)
                if _subpackage(target) == _subpackage(m) and target != "ppo_core":
                    continue  # modules of one subpackage among themselves
                if target.rpartition(".")[2].startswith("_"):
                    continue  # names of a private module (_validate)
                bad.append(f"{p.relative_to(SRC)}:{line} takes {n} from {target}")
        tree = ast.parse(p.read_text(encoding="utf-8"))
        for node in ast.walk(tree):  # ppo_core._x as an attribute
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and node.value.id == "ppo_core"):
                bad.append(f"{p.relative_to(SRC)}:{node.lineno} reaches ppo_core.{node.attr}")
    assert not bad, "\n".join(bad)


def test_no_module_outside_envs_compares_an_env_id_with_metadrive():
    bad = []
    for p in PKG.rglob("*.py"):
        if (PKG / "envs") in p.parents:
            continue
        tree = ast.parse(p.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            consts = []
            if isinstance(node, ast.Compare):
                consts = [c for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr in ("startswith", "endswith", "find", "index"):
                consts = [a for a in node.args if isinstance(a, ast.Constant)]
            if any(isinstance(c.value, str) and "metadrive" in c.value.lower() for c in consts):
                bad.append(f"{p.relative_to(SRC)}:{node.lineno}")
    assert not bad, "env-family checks outside ppo_core.envs: " + ", ".join(bad)
