"""The JSON text an entry is stored as, made and read fast. Pure module: no I/O.

:meth:`~celery_dcron.entries.EntrySpec.dumps` writes the text kombu's encoder would
(``sort_keys=True``: dates and UUIDs survive), built from its parts for the types a
validated entry holds (:func:`entry_text`); :meth:`~celery_dcron.entries.EntrySpec.loads`
reads it with plain JSON unless it holds a kombu-typed value (:func:`json_loads`).
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from kombu.utils import json as kjson

from .enums import AfterRun, EntrySource, MisfirePolicy
from .schedules import AtSchedule, CronSchedule, IntervalSchedule, Schedule

if TYPE_CHECKING:
    from .entries import EntrySpec

__all__ = [
    "ENCODER",
    "due_fields",
    "entry_text",
    "json_loads",
    "listed",
    "mapping_json",
    "plain",
    "stored_version",
    "version_tail",
    "with_version",
]

#: The encoder of ``kombu.utils.json.dumps(data, sort_keys=True)``, made once.
ENCODER = kjson.JSONEncoder(sort_keys=True)


def _make_plain() -> Callable[[Any], str]:
    """``json.dumps(value, sort_keys=True)`` of a plain JSON value (then kombu's encoder
    makes the same text), raising TypeError, ValueError or RecursionError (no circular
    check) for any other: C's encoder, made once, not once per call as ``encode`` does."""
    make, refuse = getattr(json.encoder, "c_make_encoder", None), json.JSONEncoder().default
    try:
        chunks = make(None, refuse, _string, None, ": ", ", ", True, False, True)  # type: ignore[misc]
    except TypeError:  # no C encoder, or another signature
        return json.JSONEncoder(sort_keys=True, check_circular=False).encode
    return lambda value: "".join(chunks(value, 0))


_string = json.encoder.encode_basestring_ascii
plain = _make_plain()
#: Plain JSON, without kombu's hook (which is a Python call per object of the text).
_PLAIN = json.JSONDecoder()


def json_loads(text: str | bytes) -> Any:
    """kombu's JSON ``loads``, faster for the texts without a kombu-typed value (a date,
    a UUID...): only those carry a ``__type__`` key (or an escape that could spell one)."""
    if isinstance(text, bytes):
        text = text.decode()
    if "__type__" in text or "\\u" in text:
        return kjson.loads(text)
    return _PLAIN.decode(text)


def due_fields(text: str) -> tuple[str, str] | None:
    """The JSON text of a stored entry's schedule object and its ``start_ms`` ('' when it
    has none), found without decoding the rest (as the ``LOAD`` script's mode ``s`` finds
    them); None when they cannot be found so for sure: a key spelled more than once (args,
    kwargs or options may hold a "schedule" of their own), no schedule object, or a
    control character the script's reply could not carry. What an instance reads to order
    thousands of entries it comes to own by when they are due, before it decodes them."""
    if "\x1f" in text:
        return None
    at = _once(text, '"schedule": ')
    start_at = _once(text, '"start_ms": ')
    if at is None or at < 0 or start_at is None or text[at : at + 1] != "{":
        return None
    depth, end = 0, at  # the object by its braces, as Lua's %b{} reads it
    for end in range(at, len(text)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if depth == 0:
            break
    else:
        return None
    start = ""
    if start_at >= 0:
        stop = start_at + 1 if text[start_at : start_at + 1] == "-" else start_at
        while stop < len(text) and text[stop] in "0123456789":
            stop += 1
        start = text[start_at:stop] if stop > start_at and text[stop - 1] != "-" else ""
    return text[at : end + 1], start


def _once(text: str, key: str) -> int | None:
    """Where what follows ``key`` starts when it occurs once in ``text``; -1: never; None:
    more than once."""
    first = text.find(key)
    if first < 0:
        return -1
    if text.find(key, first + 1) >= 0:
        return None
    return first + len(key)


def entry_text(spec: EntrySpec, call: tuple[str, str] | None) -> str | None:
    """``ENCODER.encode(spec.to_json())``, made from its parts without the dicts (a third
    of a bulk write was them and the encoder's set-up), for the types a validated entry
    holds; None (or TypeError) for any other (an int subclass...): then made that way."""
    args, kwargs = call if call is not None else (_value_json(listed(spec.args)), None)
    if kwargs is None:
        kwargs = mapping_json(spec.kwargs, _value_json)
    schedule, enabled = _schedule_json(spec.schedule), spec.enabled
    name, task, version = spec.name, spec.task, spec.version
    if schedule is None or type(enabled) is not bool or type(version) is not int:
        return None
    if type(name) is not str or type(task) is not str:
        return None
    head = f'"args": {args}'  # the keys in order: after_run, args, description, enabled...
    if spec.after_run is not None:
        head = f'"after_run": {_enum_json(spec.after_run)}, {head}'
    if spec.description:
        if type(spec.description) is not str:
            return None
        head = f'{head}, "description": {_string(spec.description)}'
    middle = f'"kwargs": {kwargs}'
    if spec.end_ms is not None:
        middle = f'"end_ms": {_int(spec.end_ms)}, {middle}'
    if spec.max_runs is not None:
        middle = f'{middle}, "max_runs": {_int(spec.max_runs)}'
    if (grace := spec.misfire_grace_s) is not None:
        if type(grace) is not float or not math.isfinite(grace):
            return None
        middle = f'{middle}, "misfire_grace_s": {float.__repr__(grace)}'
    if spec.misfire_policy is not None:
        middle = f'{middle}, "misfire_policy": {_enum_json(spec.misfire_policy)}'
    tail = f'"task": {_string(task)}, "version": {version}'
    if spec.start_ms is not None:
        tail = f'"start_ms": {_int(spec.start_ms)}, {tail}'
    return (
        f'{{{head}, "enabled": {"true" if enabled else "false"}, {middle}, '
        f'"name": {_string(name)}, "options": {mapping_json(spec.options, _value_json)}, '
        f'"schedule": {schedule}, "source": {_enum_json(spec.source)}, {tail}}}'
    )


def with_version(text: str, old: int, new: int) -> str | None:
    """The entry ``text`` (at version ``old``) at version ``new``: its last key, as
    :func:`entry_text` and kombu's encoder (``sort_keys``: no key of an entry sorts after
    it) write it; None when ``text`` does not end so."""
    tail = version_tail(old)
    if not text.endswith(tail):
        return None
    return text[: -len(tail)] + version_tail(new)


def version_tail(version: int) -> str:
    """How the text of an entry at ``version`` ends (its last key), as :func:`entry_text`
    and kombu's encoder (``sort_keys``) write it."""
    return f'"version": {version}}}'


_VERSION_KEY = '"version": '


def stored_version(text: str) -> int | None:
    """The version of a stored entry's JSON ``text`` when it is its last key, as
    :func:`with_version` reads it (a text ending in ``"version": 7}`` is an object whose
    last key is that one: in a string the quotes would be escaped, in an inner object
    another brace would follow); None when it does not end so (then decode it)."""
    at = text.rfind(_VERSION_KEY)
    if at < 1 or text[0] != "{" or text[-1] != "}" or text[at - 1] not in " {":
        return None
    digits = text[at + len(_VERSION_KEY) : -1]
    if not digits.isascii() or not digits.isdigit() or len(digits) > _DIGITS:
        return None
    return int(digits)


#: The most digits :func:`stored_version` reads (more: decoded), as the scripts read them
#: (exact in a Lua number).
_DIGITS = 15


#: The JSON of the enum members an entry holds, by identity (an enum's hash and value
#: are Python calls).
_ENUM_JSON = {id(m): _string(m.value) for e in (AfterRun, EntrySource, MisfirePolicy) for m in e}


def _enum_json(member: enum.Enum) -> str:
    text = _ENUM_JSON.get(id(member))
    return _string(member.value) if text is None else text


def _int(value: Any) -> str:
    return str(value) if type(value) is int else str(ENCODER.encode(value))


def listed(args: Any) -> Any:
    """``list(args)``, or ``args`` when JSON writes it as that list (a tuple)."""
    return args if isinstance(args, (tuple, list)) else list(args)


def _value_json(value: Any) -> str:
    """The JSON of ``value`` as kombu's encoder writes it (plain first: the common case)."""
    try:
        return plain(value)
    except (TypeError, ValueError, RecursionError):
        return str(ENCODER.encode(value))


def mapping_json(value: Mapping[str, Any], encode: Callable[[Any], str]) -> str:
    """The JSON of ``dict(value)`` (kwargs, options)."""
    if not value and (type(value) is dict or isinstance(value, Mapping)):
        return "{}"
    return encode(dict(value))


def _schedule_json(schedule: Schedule) -> str | None:
    """The JSON of ``schedule_to_json(schedule)`` for the usual kinds, else None."""
    if type(schedule) is IntervalSchedule and type(every := schedule.every_ms) is int:
        return f'{{"every_ms": {every}, "kind": "interval"}}'
    if type(schedule) is CronSchedule:
        expr, tz, day_or = schedule.expr, schedule.tz, schedule.day_or
        if type(expr) is str and type(tz) is str and type(day_or) is bool:
            day, expr, tz = "true" if day_or else "false", _string(expr), _string(tz)
            return f'{{"day_or": {day}, "expr": {expr}, "kind": "cron", "tz": {tz}}}'
    if type(schedule) is AtSchedule and type(at := schedule.at_ms) is int:
        return f'{{"at_ms": {at}, "kind": "at"}}'
    return None
