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
    r"pending|events|lock)(:|$))"
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
