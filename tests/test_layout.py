"""The layout of the code holds (docs/architecture.md, "Import rules"), read from the imports.

Every import counts, those inside functions and under ``TYPE_CHECKING`` too: a circle held
together by a function-local import is still a circle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("streams", "rating", "tariffs", "schemas")

#: streams/ by floor: an import goes to a lower floor only, never sideways to another
#: package of its own floor (docs/architecture.md).
FLOORS: dict[str, int] = {
    "streams.settings": 1,
    "streams.cdr_files": 1,
    "streams.kafka": 2,
    "streams.clickhouse": 2,
    "streams.offline": 2,
    "streams.catalog": 3,
    "streams.finance": 3,
    "streams.stack": 3,
    "streams.worker": 4,
    "streams.feeds": 4,
    "streams.ledger": 4,
    "streams.cli": 5,
}
#: Modules that say they are pure: no broker or warehouse client, no servers.
PURE = (
    "streams.worker.batch",
    "streams.worker.ledger_fold",
    "streams.worker.messages",
    "streams.worker.state_records",
    "streams.feeds.routing",
)
CLIENT_LIBRARIES = {"faust", "mode", "kafka", "aiokafka", "clickhouse_driver", "aiohttp", "urllib", "http", "socket"}
#: (package, may never import)
NEVER = (
    ("rating", "streams"),
    ("rating", "kafka"),
    ("rating", "clickhouse_driver"),
    ("tariffs", "streams"),
    ("tariffs", "rating"),
    ("schemas", "streams"),
    ("schemas", "rating"),
)


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(f): f for pkg in PACKAGES for f in (ROOT / pkg).rglob("*.py")}


def _resolve(name: str) -> str | None:
    modules = _modules()
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> Iterator[tuple[str, int]]:
    """Every (imported name, line) of a module, relative imports resolved."""
    path = _modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            yield base, node.lineno
            for alias in node.names:
                yield f"{base}.{alias.name}", node.lineno


@cache
def _edges() -> dict[str, dict[str, int]]:
    """module -> {project module it imports: first line}."""
    edges: dict[str, dict[str, int]] = {}
    for module in _modules():
        out: dict[str, int] = {}
        for name, line in _imports(module):
            if name.split(".")[0] in PACKAGES:
                target = _resolve(name)
                if target and target != module and target not in _parents(module):
                    out.setdefault(target, line)
        edges[module] = out
    return edges


def _parents(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:k]) for k in range(1, len(parts))}


def _package(module: str) -> str | None:
    """The streams/ sub-package (or shared leaf) a module belongs to."""
    for key in sorted(FLOORS, key=len, reverse=True):
        if module == key or module.startswith(key + "."):
            return key
    return None


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _where(module: str, line: int) -> str:
    return f"{_modules()[module].relative_to(ROOT)}:{line}"


def test_streams_is_split_into_packages_by_job() -> None:
    flat = sorted(f.name for f in (ROOT / "streams").glob("*.py") if f.name != "__init__.py")
    assert flat == ["cdr_files.py", "settings.py"]
    for package in (key for key in FLOORS if key.count(".") == 1 and (ROOT / key.replace(".", "/")).is_dir()):
        assert (ROOT / package.replace(".", "/") / "__init__.py").exists(), package
    unplaced = [m for m in _modules() if m.startswith("streams.") and _package(m) is None]
    assert unplaced == []


def test_no_import_circle_anywhere() -> None:
    edges = _edges()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in edges:
        if module not in index:
            visit(module)
    assert circles == []


def test_imports_go_down_the_floors_only() -> None:
    wrong = []
    for module, targets in _edges().items():
        source = _package(module)
        if source is None:
            continue
        for target, line in targets.items():
            destination = _package(target)
            if destination is None or destination == source:
                continue
            if FLOORS[destination] >= FLOORS[source]:
                wrong.append(f"{_where(module, line)}: {source} (floor {FLOORS[source]}) imports {target} "
                             f"(floor {FLOORS[destination]})")
    assert wrong == []


def test_the_top_level_packages_keep_their_never_rules() -> None:
    wrong = [
        f"{_where(module, line)}: {module} imports {name}"
        for module in _modules()
        for name, line in _imports(module)
        for package, never in NEVER
        if module.split(".")[0] == package and name.split(".")[0] == never
    ]
    assert wrong == []


def test_only_the_command_line_imports_typer_and_rich() -> None:
    wrong = [
        f"{_where(module, line)}: {name}"
        for module in _modules()
        if not _in(module, "streams.cli")
        for name, line in _imports(module)
        if name.split(".")[0] in ("typer", "rich")
    ]
    assert wrong == []


def test_nothing_imports_the_command_line() -> None:
    wrong = [
        f"{_where(module, line)}: {target}"
        for module, targets in _edges().items()
        if not _in(module, "streams.cli")
        for target, line in targets.items()
        if _in(target, "streams.cli")
    ]
    assert wrong == []


def test_command_modules_import_no_other_command_module() -> None:
    shared = {"streams.cli._common", "streams.cli.format_options", "streams.cli.live_display"}
    # `demo` runs other commands in order; `main` registers them from its table.
    allowed_to = {"streams.cli.demo", "streams.cli.main", "streams.cli"}
    wrong = [
        f"{_where(module, line)}: {target}"
        for module, targets in _edges().items()
        if module.startswith("streams.cli.") and module not in allowed_to
        for target, line in targets.items()
        if target.startswith("streams.cli.") and target not in shared
    ]
    assert wrong == []


def test_offline_rating_imports_no_kafka_or_clickhouse_code() -> None:
    wrong = [
        f"{_where(module, line)}: {name}"
        for module in _modules()
        if module.startswith("streams.offline")
        for name, line in _imports(module)
        if name.split(".")[0] in CLIENT_LIBRARIES
        or (name.startswith("streams.") and _package(_resolve(name) or "") not in (None, "streams.offline", "streams.cdr_files"))
    ]
    assert wrong == []


def test_finance_only_reads_clickhouse() -> None:
    wrong = [
        f"{_where(module, line)}: {target}"
        for module, targets in _edges().items()
        if module.startswith("streams.finance")
        for target, line in targets.items()
        # cdr_files: its output helpers (never over an input, never through a link; no client)
        if target.startswith("streams.")
        and _package(target) not in ("streams.finance", "streams.clickhouse", "streams.settings", "streams.cdr_files")
    ]
    assert wrong == []


def test_the_worker_does_not_carry_the_process_manager() -> None:
    wrong = [
        f"{_where(module, line)}: {target}"
        for module, targets in _edges().items()
        if module.startswith("streams.worker")
        for target, line in targets.items()
        if _in(target, "streams.stack") and target != "streams.stack.embedded"
    ]
    assert wrong == []


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_no_client(module: str) -> None:
    source = _modules()[module].read_text(encoding="utf-8")
    assert "Pure" in source.split('"""')[1], f"{module}: its docstring should say it is pure"
    clients = [
        name
        for name, _ in _imports(module)
        if name.split(".")[0] in CLIENT_LIBRARIES
        or (name.startswith("streams.") and not name.startswith(("streams.worker", "streams.feeds.routing", "streams.clickhouse.tables")))
    ]
    assert clients == []


def test_sub_package_inits_hold_no_code() -> None:
    # `cdrflow rate`'s start-up budget: importing a package must not import its modules.
    wrong = []
    for init in (ROOT / "streams").glob("*/__init__.py"):
        if init.parent.name == "cli":
            continue  # sets the allocator's variables before polars loads (docs/architecture.md)
        body = ast.parse(init.read_text(encoding="utf-8")).body
        if [node for node in body if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]:
            wrong.append(str(init.relative_to(ROOT)))
    assert wrong == []


def test_topic_names_come_from_schemas_topics() -> None:
    """No module of streams/ types a topic name: a dotted one (``cdr.raw``) nowhere; an
    undotted one (``alerts``, ``plans``, ``accounts``, words that are also keys of JSON
    answers and table names) not as an argument of a ``*topic*`` function nor as the value
    of a ``*TOPIC*`` constant."""
    from schemas.topics import TOPICS

    def name_of(node: ast.AST) -> str:
        if isinstance(node, ast.Name):
            return node.id
        if isinstance(node, ast.Attribute):
            return node.attr
        return ""

    wrong = []
    for module, path in _modules().items():
        if not module.startswith("streams."):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        as_topic: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and "topic" in name_of(node.func).lower():
                as_topic |= {id(arg) for arg in [*node.args, *(k.value for k in node.keywords)]}
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
            if any("TOPIC" in name_of(target).upper() for target in targets) and node.value is not None:
                # a dict's keys are what the topics are for, its values the topics
                values = node.value.values if isinstance(node.value, ast.Dict) else [node.value]
                as_topic |= {id(sub) for value in values for sub in ast.walk(value)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in TOPICS and ("." in node.value or id(node) in as_topic):
                wrong.append(f"{_where(module, node.lineno)}: {node.value!r}")
    assert wrong == []
