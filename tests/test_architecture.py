"""The package's shape, checked: imports point down the layers of ../shared/DESIGN.md (and the
README's architecture section), no keytok_jax module is imported inside a function (that is how
upward imports hide), and no module grows past what a reader takes in at once."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "keytok_jax"

# Lowest first. A module may import its own package and lower ranks; packages sharing a rank may
# not import each other.
LAYERS = [
    ("errors", "records"),
    ("models", "pooling", "projection", "sharding", "distributed"),
    ("model", "flops"),
    ("loading",),
    ("settings", "compile_cache"),
    ("store",),
    ("pipeline",),
    ("retrieval", "analysis"),
    ("train",),
    ("cli",),
    # python -m keytok_jax.X entry points and the package's public face
    ("__init__", "__main__", "embed", "search", "evaluate", "export", "show", "spectral", "sts",
     "finetune"),
]
RANK = {name: r for r, names in enumerate(LAYERS) for name in names}

# External packages a function may import lazily: optional or heavy, or needing setup first.
LAZY_OK = {"matplotlib", "torch", "transformers", "pyarrow", "tqdm", "scipy", "bm25s",
           "ir_measures", "orbax", "optax", "jax.experimental.multihost_utils", "Stemmer",
           "importlib.metadata", "accelerate", "gguf", "safetensors", "tensorstore"}

MAX_MODULE_LINES = 520


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        yield path, rel.parts


def _top(parts) -> str:
    return parts[0]


def _resolve(parts, node: ast.ImportFrom) -> list[tuple[str, ...]]:
    """keytok_jax-relative module paths named by a ``from ... import`` (empty if external)."""
    if node.level == 0:
        if not (node.module or "").startswith("keytok_jax"):
            return []
        base = tuple(node.module.split(".")[1:])
    else:
        package = parts[:-1]  # the package holding this module (for __init__: its own)
        base = package[: len(package) - (node.level - 1)]
        base += tuple(node.module.split(".")) if node.module else ()
    if base:
        return [base]
    return [(alias.name,) for alias in node.names]  # from keytok_jax import x / from . import x


def _imports(tree: ast.AST, parts):
    """(line, keytok_jax-relative module path, inside a function?) for each import."""
    out = []

    def visit(node, in_func):
        for child in ast.iter_child_nodes(node):
            f = in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom):
                for target in _resolve(parts, child):
                    out.append((child.lineno, target, f, None))
                if child.level == 0 and not (child.module or "").startswith("keytok_jax"):
                    out.append((child.lineno, None, f, child.module))
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] == "keytok_jax":
                        target = tuple(alias.name.split(".")[1:]) or ("__init__",)
                        out.append((child.lineno, target, f, None))
                    else:
                        out.append((child.lineno, None, f, alias.name))
            visit(child, f)

    visit(tree, False)
    return out


def test_every_module_has_a_layer():
    missing = sorted({_top(parts) for _, parts in _modules()} - set(RANK))
    assert not missing, f"add these to LAYERS (tests/test_architecture.py and DESIGN.md): {missing}"


def test_imports_point_down():
    problems = []
    for path, parts in _modules():
        me = _top(parts)
        if me not in RANK:
            continue  # test_every_module_has_a_layer names it
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for line, target, _, _ in _imports(tree, parts):
            if not target:
                continue
            other = target[0]
            if other == me:
                continue
            if other not in RANK:
                problems.append(f"{path.relative_to(PKG.parent)}:{line}: imports keytok_jax."
                                f"{'.'.join(target)}, which has no layer")
                continue
            if RANK[other] > RANK[me] or (RANK[other] == RANK[me] and other != me):
                problems.append(f"{path.relative_to(PKG.parent)}:{line}: {me} (layer {RANK[me]}) "
                                f"imports {'.'.join(target)} (layer {RANK[other]})")
    assert not problems, "upward or sideways imports:\n" + "\n".join(problems)


def test_no_function_level_imports():
    problems = []
    for path, parts in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for line, target, in_func, external in _imports(tree, parts):
            if not in_func:
                continue
            if target is not None:
                problems.append(f"{path.relative_to(PKG.parent)}:{line}: imports keytok_jax."
                                f"{'.'.join(target)} inside a function")
            elif not any(external == ok or external.startswith(ok + ".") for ok in LAZY_OK):
                problems.append(f"{path.relative_to(PKG.parent)}:{line}: imports {external} inside "
                                f"a function (not an optional or heavy dependency)")
    assert not problems, "\n".join(problems)


def test_modules_are_short():
    long = [f"{path.relative_to(PKG.parent)}: {n} lines" for path, _ in _modules()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES]
    assert not long, f"modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(long)


@pytest.mark.parametrize("package", ["pipeline", "store", "retrieval", "cli"])
def test_pipeline_functions_are_short(package):
    """Functions of the job's path read at once (≤ 60 lines)."""
    long = []
    for path in sorted((PKG / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 60:
                    long.append(f"{path.relative_to(PKG.parent)}:{node.lineno} {node.name}: {n} lines")
    assert not long, "\n".join(long)
