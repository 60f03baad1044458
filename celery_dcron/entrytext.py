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
    "entry_text",
    "json_loads",
    "listed",
    "mapping_json",
    "plain",
    "schedule_text",
    "start_ms_text",
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


def schedule_text(text: str) -> str | None:
    """The JSON text of the schedule object of a stored entry text, found without decoding
    the rest of it (as the ``LOAD`` script's mode ``s`` finds it); None when it is not found
    so (a text written otherwise than :func:`entry_text` and kombu's sorted encoder do).
    What an instance reads to order thousands of entries it comes to own by when they are
    due, before it reads and decodes them."""
    at = _top_level(text, "schedule")
    if at < 0:
        return None
    try:
        end = _PLAIN.raw_decode(text, at)[1]
    except ValueError:
        return None
    return text[at:end] if text[at] == "{" else None


def start_ms_text(text: str) -> str | None:
    """The ``start_ms`` of a stored entry text, found as :func:`schedule_text` finds the
    schedule; None when there is none."""
    at = _top_level(text, "start_ms")
    if at < 0:
        return None
    end = at + 1 if text[at : at + 1] == "-" else at
    while end < len(text) and text[end].isdigit():
        end += 1
    return text[at:end] or None


def _top_level(text: str, key: str) -> int:
    # Keys are sorted: after "schedule" come only "source", "start_ms", "task" and
    # "version", none of them an object, and a JSON string cannot hold an unescaped quote:
    # so the last '"schedule": ' (or '"start_ms": ') is the entry's own. Args, kwargs and
    # options come before it, and may hold such a key of their own.
    at = text.rfind(f'"{key}": ')
    return at if at < 0 else at + len(key) + 4


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
