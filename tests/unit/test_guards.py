"""Guards on the shape of the package: key names in one module, lazy imports, typing."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "celery_dcron"
KEY_LIKE = re.compile(
    r"(\{dcron|:(nodes|alive|status|meta|entries|static|tombstones|anchor|last|runs|lastnode|"
    r"pending|requests|errors|events|lock)(:|$))"
)


def test_no_redis_key_literal_outside_the_registry() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).parts[0] == "registry" or "migrations" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            is_str = isinstance(node, ast.Constant) and isinstance(node.value, str)
            if is_str and KEY_LIKE.search(node.value):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {node.value!r}")
    assert not offenders, "Redis key names belong in registry/:\n" + "\n".join(offenders)


def test_import_is_light_and_works_without_django() -> None:
    code = (
        "import sys; sys.modules['django'] = None\n"
        "import celery_dcron\n"
        "heavy = [m for m in ('redis', 'celery.beat', 'django') if sys.modules.get(m)]\n"
        "assert not heavy, heavy\n"
        "print(celery_dcron.__version__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()


def test_py_typed_is_shipped() -> None:
    assert (PACKAGE / "py.typed").exists()


# -- Lua scripts: Redis Cluster safe ---------------------------------------------------------

#: Commands a script may call without a key as first argument (PUBLISH's channel is no key).
KEYLESS_COMMANDS = {"TIME", "PUBLISH"}
#: Commands no script may call: they look keys up or build them behind the caller's back.
FORBIDDEN_COMMANDS = {"KEYS", "SCAN", "RANDOMKEY", "SELECT", "EVAL", "EVALSHA", "MIGRATE"}


def _lua_calls(script: str) -> list[list[str]]:
    """The top-level argument lists of every ``redis.call(...)``/``redis.pcall(...)``."""
    calls = []
    for match in re.finditer(r"redis\.p?call\(", script):
        i, depth, quote, args, current = match.end(), 1, "", [], ""
        while depth:
            ch = script[i]
            if quote:
                quote = "" if ch == quote else quote
            elif ch in "'\"":
                quote = ch
            elif ch in "([{":
                depth += 1
            elif ch in ")]}":
                depth -= 1
            if depth == 1 and not quote and ch == ",":
                args.append(current.strip())
                current = ""
            elif depth:
                current += ch
            i += 1
        args.append(current.strip())
        calls.append(args)
    return calls


def _key_violations(script: str) -> list[str]:
    """Calls whose key does not come straight from KEYS (or that are not allowed at all)."""
    problems = []
    for args in _lua_calls(script):
        command = args[0]
        literal = re.fullmatch(r"'([A-Za-z]+)'|\"([A-Za-z]+)\"", command)
        if literal is None:
            problems.append(f"command not a literal: {args}")
            continue
        name = (literal[1] or literal[2]).upper()
        if name in FORBIDDEN_COMMANDS:
            problems.append(f"forbidden command {name}: {args}")
        elif name not in KEYLESS_COMMANDS and (
            len(args) < 2 or not re.fullmatch(r"KEYS\[[^\[\]]+\]", args[1])
        ):
            problems.append(f"{name} on a key not taken from KEYS: {args}")
    return problems


def _registry_scripts() -> dict[str, str]:
    from celery_dcron.registry import scripts

    return {
        name: value.source
        for name, value in vars(scripts).items()
        if isinstance(value, scripts.Script)
    }


def test_every_lua_script_takes_every_key_it_touches_from_KEYS() -> None:
    """On Redis Cluster a script may only touch keys passed in KEYS (all of one slot:
    the namespace's hash tag); a key built inside a script could live on another node."""
    scripts = _registry_scripts()
    assert {"HEARTBEAT", "CLAIM", "RETAKE", "PUT_ENTRY", "CLEANUP", "TIME"} <= set(scripts)
    problems = [f"{name}: {p}" for name, text in scripts.items() for p in _key_violations(text)]
    assert not problems, "\n".join(problems)


def test_every_script_names_as_many_keys_as_it_indexes() -> None:
    """Keys are bound by name (``Script.keys``): the highest ``KEYS[n]`` a script reads
    with a literal n is the number of keys it names, so a script cannot read a key its
    callers do not pass, nor be passed one it ignores (per-tick locks follow, unnamed)."""
    from celery_dcron.registry import Keys, scripts

    for script in scripts.ALL:
        indexes = [int(n) for n in re.findall(r"KEYS\[(\d+)\]", script.source)]
        # feed(meta, stream, name, kind[, due]) takes the KEYS indexes of the meta hash,
        # the feed and the due index
        for meta, stream in re.findall(r"\bfeed\((\d+), (\d+),", script.source):
            indexes += [int(meta), int(stream)]
        indexes += [int(d) for d in re.findall(r"\bfeed\([^)]*'\w+', (\d+)\)", script.source)]
        assert max(indexes, default=len(script.keys)) == len(script.keys), script.name
        bound = script.bind(Keys("p", "n"), ["extra"])
        assert bound[-1] == "extra" and len(set(bound)) == len(script.keys) + 1


def test_the_lua_key_guard_catches_built_keys() -> None:
    assert _key_violations("redis.call('GET', ARGV[1] .. ':x')")
    assert _key_violations("redis.call('HSET', 'dcron:' .. KEYS[1], 'f', 1)")
    assert _key_violations("local k = KEYS[1] .. ':lock'\nredis.call('SET', k, 1)")
    assert _key_violations("redis.call('KEYS', '*')")
    assert _key_violations("redis.call(cmd, KEYS[1])")
    assert not _key_violations(
        "redis.call('HSET', KEYS[4 + i], ARGV[1], string.format('%s', ARGV[2]))\n"
        "redis.call('PUBLISH', ARGV[1], 'entries')\nlocal t = redis.call('TIME')"
    )


# -- import direction ------------------------------------------------------------------------
# Arrows point one way: pure modules <- registry, clock <- membership, engine <- scheduler,
# api <- cli, contrib.django. Read by AST, so an import inside a function (a cycle dodged
# at run time) counts like any other; imports under ``if TYPE_CHECKING:`` (annotations
# only) do not.

#: No I/O, no clock: value objects, tick math, rules. They import only each other.
PURE = {
    "enums", "exceptions", "schedules", "ticks", "entries", "entrytext", "planning",
    "interfaces", "validation", "logfields", "strategies",
}  # fmt: skip
#: Third-party packages that do I/O or belong to a layer above the pure core.
IO_PACKAGES = {"redis", "kombu", "celery", "django", "click", "prometheus_client"}
#: Pure module -> the one I/O-package module it may import, and why.
PURE_EXCEPTIONS = {
    # the registry's JSON text of an entry: kombu's JSON (dates in args/options survive,
    # as in Celery's messages); a pure function, it connects to nothing
    ("entrytext", "kombu.utils.json"),
}
#: The core modules that import celery, and why (contrib.django, an integration, may too).
CELERY_IMPORTERS = {
    "scheduler",  # DistributedScheduler is a celery.beat.Scheduler
    "celery_schedules",  # converts Celery's crontab/solar/schedule; cron is a BaseSchedule
    "signals",  # celery's Signal class, as Celery's own signals
    "engine.failures",  # tells a permanent publish failure by Celery's exception types
    "templates",  # whether Celery's publish signals have receivers, apply_async is Celery's
}
#: Import cycles that are not load-order dependencies, and why.
CYCLE_EXCEPTIONS = {
    # read at run time (``package.CLAIM_CHUNK``) so that tests patch the package's constant
    ("engine.loop", "engine"),
}


def _module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) or "celery_dcron"


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def _imports(
    package: Path = PACKAGE,
) -> dict[str, set[tuple[str, bool, bool]]]:
    """module -> {(imported, is_internal, lazy)}. Internal names are relative to the package
    (``"ticks"``, ``"registry.codec"``), external ones in full (``"kombu.utils.json"``);
    ``lazy``: inside a function."""
    files = {
        _module_name(p, package): p for p in package.rglob("*.py") if "migrations" not in p.parts
    }
    result: dict[str, set[tuple[str, bool, bool]]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_nodes(tree)
        lazy = {
            id(n)
            for f in ast.walk(tree)
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            for n in ast.walk(f)
        }
        found: set[tuple[str, bool, bool]] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif (
                isinstance(node, ast.ImportFrom)
                and node.level == 0
                and not (f"{node.module}.".startswith("celery_dcron."))
            ):
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level == 0:  # from celery_dcron.x import y
                    target = str(node.module).removeprefix("celery_dcron").lstrip(".")
                else:
                    base = [] if module == "celery_dcron" else module.split(".")
                    if path.name != "__init__.py":
                        base = base[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join([*base, *([node.module] if node.module else [])])
                for alias in node.names:  # ``from . import ticks`` names a module
                    sub = f"{target}.{alias.name}".lstrip(".")
                    key = sub if sub in files else (target or "celery_dcron")
                    found.add((key, True, id(node) in lazy))
                continue
            else:
                continue
            for name in names:
                if name == "celery_dcron" or name.startswith("celery_dcron."):
                    name = name.removeprefix("celery_dcron").lstrip(".") or "celery_dcron"
                    found.add((name, True, id(node) in lazy))
                else:
                    found.add((name, False, id(node) in lazy))
        result[module] = found
    return result


def _is_pure(module: str) -> bool:
    return module.split(".")[0] in PURE


def _direction_problems(imports: dict[str, set[tuple[str, bool, bool]]]) -> list[str]:
    problems = []
    for module, found in sorted(imports.items()):
        core = module.split(".")[:2] != ["contrib", "django"]
        for name, internal, _lazy in sorted(found):
            top = name.split(".")[0]
            if _is_pure(module) and internal and not _is_pure(name):
                problems.append(f"{module} (pure) imports {name}, which is not pure")
            pure_io = _is_pure(module) and not internal and top in IO_PACKAGES
            if pure_io and (module, name) not in PURE_EXCEPTIONS:
                problems.append(f"{module} (pure) imports {name}")
            if core and not internal and top == "django":
                problems.append(f"{module} (core) imports {name}: only contrib.django may")
            if core and not internal and top == "celery" and module not in CELERY_IMPORTERS:
                problems.append(f"{module} imports {name}: add it to CELERY_IMPORTERS, or don't")
    return problems


def _cycles(imports: dict[str, set[tuple[str, bool, bool]]]) -> list[list[str]]:
    """Strongly connected groups of modules. A package's lazy ``__getattr__`` imports of
    its public names are not edges (nothing imports them at load time)."""
    graph = {
        module: {
            name
            for name, internal, lazy in found
            if internal
            and name in imports
            and name != module
            and not (lazy and module == "celery_dcron")
            and (module, name) not in CYCLE_EXCEPTIONS
        }
        for module, found in imports.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while (w := stack.pop()) != v:
                group.append(w)
            if group:
                groups.append(sorted([v, *group]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_pure_modules_import_downward_only_and_the_core_no_django() -> None:
    imports = _imports()
    assert {"ticks", "validation", "strategies.modulo", "engine.loop"} <= set(imports)
    problems = _direction_problems(imports)
    assert not problems, "\n".join(problems)


def test_no_import_cycles_even_inside_functions() -> None:
    assert _cycles(_imports()) == []


def test_the_import_guards_catch_a_wrong_arrow(tmp_path: Path) -> None:
    # A copy of the package with two wrong arrows: the guards must see both.
    import shutil

    copy = tmp_path / "celery_dcron"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    ticks = copy / "ticks.py"
    ticks.write_text(ticks.read_text() + "\nimport redis\nfrom .registry import keys\n")
    schedules = copy / "schedules.py"
    schedules.write_text(schedules.read_text() + "\ndef f():\n    from .ticks import next_tick\n")
    imports = _imports(copy)
    problems = _direction_problems(imports)
    assert "ticks (pure) imports redis" in problems
    assert "ticks (pure) imports registry.keys, which is not pure" in problems
    assert ["schedules", "ticks"] in _cycles(imports)
