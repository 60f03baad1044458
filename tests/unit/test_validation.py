"""The field rules (celery_dcron.validation) and the enums strings become at the edge."""

from __future__ import annotations

import enum
import json
import re
from dataclasses import fields, replace
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kombu.utils import json as kjson

from celery_dcron import validation as rules
from celery_dcron.config import Settings
from celery_dcron.engine.timeline import earliest_due_ms
from celery_dcron.entries import EntrySpec, EntryState, new_spec
from celery_dcron.entrytext import due_fields, stored_version
from celery_dcron.enums import AfterRun, EntrySource, MisfirePolicy, StrategyName
from celery_dcron.exceptions import ConfigurationError, InvalidEntryError, InvalidScheduleError
from celery_dcron.planning import next_run_ms
from celery_dcron.registry import due_hint
from celery_dcron.schedules import AtSchedule, CronSchedule, IntervalSchedule
from celery_dcron.strategies import RendezvousStrategy, get_strategy

pytestmark = pytest.mark.unit

UTC = timezone.utc


# -- enums: the same strings in JSON, enums inside ---------------------------------------


def test_an_entry_written_by_the_previous_version_loads_with_enums_and_dumps_the_same() -> None:
    old = {
        "name": "x", "task": "t", "schedule": {"kind": "interval", "every_ms": 5000},
        "args": [], "kwargs": {}, "options": {}, "enabled": True, "source": "django",
        "version": 3, "misfire_policy": "all", "max_runs": 2, "after_run": "tombstone",
    }  # fmt: skip
    spec = EntrySpec.loads(json.dumps(old))
    assert spec.source is EntrySource.DJANGO and spec.after_run is AfterRun.TOMBSTONE
    assert spec.misfire_policy is MisfirePolicy.ALL
    assert spec.to_json() == old
    assert EntrySpec.loads(spec.dumps()) == spec
    without = {k: v for k, v in old.items() if k not in ("source", "after_run")}
    assert EntrySpec.from_json(without).source is EntrySource.STATIC  # the old default


def test_kombu_typed_values_survive_the_stored_json_as_plain_ones_do() -> None:
    """Entries are read with plain JSON unless their text holds a kombu-typed value (a
    date, a UUID...; or an escape that could spell its marker): both read back equal."""
    when = datetime(2026, 12, 4, 18, 0, tzinfo=UTC)
    typed = EntrySpec(
        name="x", task="t", schedule=IntervalSchedule(every_ms=5000),
        kwargs={"since": when}, options={"eta_hint": when},
    )  # fmt: skip
    assert "__type__" in typed.dumps()
    back = EntrySpec.loads(typed.dumps())
    assert back == typed and back.kwargs["since"] == when
    plain = EntrySpec(name="y", task="t", schedule=IntervalSchedule(every_ms=5000), args=("é",))
    assert EntrySpec.loads(plain.dumps()) == plain
    escaped = plain.dumps().replace('"args": [', '"\\u0061rgs": [')  # "args", escaped
    assert EntrySpec.loads(escaped.encode()) == plain


def test_entries_without_kwargs_or_options_share_one_read_only_empty_mapping() -> None:
    """A third of a loaded entry's memory was its two empty dicts: entries read from the
    registry share one, which refuses changes, pickles to itself and equals ``{}``."""
    import pickle

    texts = [
        EntrySpec(name=n, task="t", schedule=IntervalSchedule(every_ms=5000)).dumps()
        for n in ("a", "b")
    ]
    a, b = (EntrySpec.loads(t) for t in texts)
    assert a.kwargs is b.kwargs is a.options and a.kwargs == {} and a.to_json()["kwargs"] == {}
    with pytest.raises(TypeError, match="read-only"):
        a.kwargs["x"] = 1  # type: ignore[index]
    assert pickle.loads(pickle.dumps(a)) == a
    copy = dict(a.kwargs)
    copy["x"] = 1  # a copy changes freely
    with_kwargs = EntrySpec.loads(texts[0].replace('"kwargs": {}', '"kwargs": {"k": 1}'))
    assert with_kwargs.kwargs == {"k": 1} and with_kwargs.kwargs is not a.kwargs


@pytest.mark.parametrize(
    ("key", "value"),
    [("source", "cron-job"), ("source", None), ("source", ["a"]), ("source", ""),
     ("after_run", "explode")],
)  # fmt: skip
def test_an_unknown_enum_value_in_stored_json_names_the_entry_and_field(
    key: str, value: object
) -> None:
    data = {"name": "x", "task": "t", "schedule": {"kind": "at", "at_ms": 1}, key: value}
    with pytest.raises(
        InvalidEntryError, match=f"entry 'x': {key}: {re.escape(repr(value))}"
    ) as err:
        EntrySpec.from_json(data)
    assert err.value.field == key


def test_enums_print_as_their_value() -> None:
    for member in (AfterRun.DISABLE, EntrySource.STATIC, MisfirePolicy.ONCE, StrategyName.RANGE):
        assert str(member) == f"{member}" == f"{member:>1}" == member.value == member
        assert json.dumps(member) == f'"{member.value}"'


def test_the_strategy_setting_is_parsed_once_at_the_edge() -> None:
    assert Settings(strategy=" Rendezvous ").strategy is StrategyName.RENDEZVOUS
    assert Settings(strategy="hash-slot").strategy is StrategyName.HASH_SLOT
    assert Settings().strategy is StrategyName.CONSISTENT_HASH
    assert "strategy='consistent_hash'" in repr(Settings())
    assert Settings(strategy="pkg.mod:Mine").strategy == "pkg.mod:Mine"  # imported when used
    with pytest.raises(ConfigurationError, match="dcron_strategy: unknown strategy 'nope'"):
        Settings(strategy="nope")
    assert isinstance(get_strategy(StrategyName.RENDEZVOUS), RendezvousStrategy)
    assert get_strategy("rendezvous").name is StrategyName.RENDEZVOUS


# -- field rules --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "value", "field"),
    [
        (rules.task_name, "", "task"),
        (rules.args, "x", "args"),
        (rules.kwargs, {1: 2}, "kwargs"),
        (rules.options, {"priority": 300}, "options.priority"),
        (rules.enabled, "yes", "enabled"),
        (rules.description, 3, "description"),
        (rules.max_runs, True, "max_runs"),
        (rules.misfire_policy, "often", "misfire_policy"),
        (rules.misfire_grace, 0, "misfire_grace"),
        (rules.after_run, "explode", "after_run"),
        (rules.tz, 1, "tz"),
        (rules.every, 0, "every"),
    ],
)
def test_each_rule_names_the_entry_and_sets_the_field(rule: Any, value: Any, field: str) -> None:
    with pytest.raises(InvalidEntryError) as err:
        rule("e", value)
    assert err.value.field == field
    assert str(err.value).startswith(f"entry 'e': {field}: ")


def test_rules_return_the_value_the_entry_keeps() -> None:
    assert rules.args("e", None) == () and rules.args("e", [1]) == (1,)
    assert rules.misfire_grace("e", timedelta(seconds=2)) == 2.0
    assert rules.after_run("e", "disable") is AfterRun.DISABLE
    assert rules.misfire_policy("e", None) is None
    assert rules.every("e", timedelta(milliseconds=1500)) == IntervalSchedule(every_ms=1500)
    assert rules.options("e", {"countdown": 1}, any_key=True) == {"countdown": 1}
    naive = datetime(2030, 1, 1, 9)
    assert rules.instant("e", "start_at", naive, "Europe/Paris") == rules.instant(
        "e", "start_at", "2030-01-01T08:00:00+00:00", None
    )
    assert rules.at("e", "2030-01-01T00:00:00+00:00", None, now_ms=lambda: 0) == AtSchedule(
        at_ms=1_893_456_000_000
    )


def test_a_value_objects_error_gets_the_entry_and_keeps_its_own_field() -> None:
    with pytest.raises(InvalidScheduleError, match="entry 'e': cron '61 \\* \\* \\* \\*'") as err:
        rules.cron("e", "61 * * * *", "UTC")
    assert err.value.field == "cron"
    with pytest.raises(InvalidScheduleError) as err:
        rules.cron("e", "* * * * *", "Mars/Olympus")
    assert err.value.field == "tz"
    assert rules.cron("e", "* * * * *", "UTC") == CronSchedule(expr="* * * * *")


def test_one_schedule_and_unknown_fields() -> None:
    kinds = rules.SCHEDULE_FIELDS
    assert rules.one_schedule("e", {"every": 1}, kinds, required=True) == "every"
    assert rules.one_schedule("e", {}, kinds, required=False) is None
    with pytest.raises(InvalidScheduleError, match="exactly one of cron=, every=, at=, schedule="):
        rules.one_schedule("e", {}, kinds, required=True)
    with pytest.raises(InvalidScheduleError, match=r"only one of .* \(got cron, every\)"):
        rules.one_schedule("e", {"every": 1, "cron": "x"}, kinds, required=False)
    with pytest.raises(InvalidEntryError, match="unknown fields \\['colour'\\]") as err:
        rules.known_fields("e", ["task", "colour"], ["task"])
    assert err.value.field == "colour"


def test_whole_entry_rules() -> None:
    spec = EntrySpec(name="e", task="t", schedule=IntervalSchedule(every_ms=1000))
    with pytest.raises(InvalidEntryError) as err:
        rules.ending(spec.with_changes(after_run=AfterRun.DELETE))
    assert err.value.field == "after_run"
    with pytest.raises(InvalidEntryError) as err:
        rules.ending(spec.with_changes(start_ms=2, end_ms=1))
    assert err.value.field == "end_at"
    with pytest.raises(InvalidEntryError) as err:
        rules.json_size(spec.with_changes(kwargs={"payload": "x" * 100}), max_bytes=50)
    assert err.value.field == "payload"
    with pytest.raises(InvalidEntryError) as err:
        rules.storable(spec.with_changes(options={"x": object()}))
    assert err.value.field == "options"
    rules.storable(spec.with_changes(options={"expires": datetime(2030, 1, 1, tzinfo=UTC)}))


# -- the stored text: made from its parts, the same as kombu's JSON of to_json() ----------

_json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
    st.datetimes(timezones=st.just(UTC)),
)  # fmt: skip
_json_value = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)
_schedules = st.one_of(
    st.builds(IntervalSchedule, every_ms=st.integers(1, 10**12)),
    st.sampled_from([CronSchedule(expr="0 7 * * *"),
                     CronSchedule(expr="*/5 * * * *", tz="Europe/Paris", day_or=False)]),
    st.builds(AtSchedule, at_ms=st.integers(0, 10**13)),
)  # fmt: skip
_specs = st.builds(
    EntrySpec,
    name=st.text(min_size=1, max_size=10), task=st.text(min_size=1, max_size=10),
    schedule=_schedules,
    args=st.lists(_json_value, max_size=3).map(tuple),
    kwargs=st.dictionaries(st.text(max_size=5), _json_value, max_size=3),
    options=st.dictionaries(st.sampled_from(["queue", "priority"]), _json_value, max_size=2),
    misfire_policy=st.none() | st.sampled_from(MisfirePolicy),
    misfire_grace_s=st.none() | st.floats(min_value=0.001, max_value=1e9),
    enabled=st.booleans(),
    start_ms=st.none() | st.integers(0, 10**13), end_ms=st.none() | st.integers(0, 10**13),
    max_runs=st.none() | st.integers(1, 10**6), source=st.sampled_from(EntrySource),
    description=st.text(max_size=5), version=st.integers(0, 10**6),
    after_run=st.none() | st.sampled_from(AfterRun),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(_specs)
def test_the_stored_text_is_kombus_json_of_to_json_to_the_byte(spec: EntrySpec) -> None:
    """Other versions read (and static sync compares) the stored text: the text made from
    its parts is the one ``kombu.utils.json.dumps(to_json(), sort_keys=True)`` made."""
    assert spec.dumps() == kjson.dumps(spec.to_json(), sort_keys=True)
    fresh = spec.with_changes()
    call = fresh.call_json()
    if call is not None:
        assert fresh.dumps(call=call) == spec.dumps()


@settings(max_examples=300, deadline=None)
@given(_specs)
def test_an_entry_read_back_is_the_entry_written(spec: EntrySpec) -> None:
    """Decoding builds entries without their ``__init__`` (it is read back by the hundred
    thousand): what it builds is what ``__init__`` builds from the same values, and is
    written back as the same text."""
    back = EntrySpec.loads(spec.dumps())
    made = EntrySpec(**{f.name: getattr(back, f.name) for f in fields(EntrySpec) if f.init})
    assert back == made  # and not == spec: NaN != NaN; the texts are compared below
    assert repr(back) == repr(made) and back.dumps() == spec.dumps()
    assert back.with_changes(version=7).version == 7


@settings(max_examples=300, deadline=None)
@given(_specs, st.integers(0, 10**9))
def test_entries_built_and_changed_without_init_are_the_ones_init_builds(
    spec: EntrySpec, version: int
) -> None:
    """``new_spec`` and ``with_changes`` (validation and bulk writes build entries by the
    hundred thousand) set the same fields as ``EntrySpec(...)`` and ``replace``; a copy
    at another version carries the text over with only its version changed."""
    values = {f.name: getattr(spec, f.name) for f in fields(EntrySpec) if f.init}
    built, made = new_spec(**values), EntrySpec(**values)
    assert repr(built) == repr(made) and built._text is None
    assert repr(spec.with_changes(version=version)) == repr(replace(spec, version=version))
    text = spec.dumps()
    moved = spec.at_version(version)
    assert moved.version == version and (moved is spec) == (version == spec.version)
    assert moved._text is not None  # carried over, not made again
    assert moved.dumps() == replace(spec, version=version).dumps()  # made afresh
    assert stored_version(text) == spec.version == json.loads(text)["version"]


def test_the_builders_keep_defaults_and_refuse_what_init_refuses() -> None:
    one = new_spec(name="a", task="t", schedule=IntervalSchedule(every_ms=1000))
    two = new_spec(name="b", task="t", schedule=IntervalSchedule(every_ms=1000))
    assert one == EntrySpec(name="a", task="t", schedule=IntervalSchedule(every_ms=1000))
    assert one.kwargs == {} and one.kwargs is not two.kwargs  # default_factory: one each
    with pytest.raises(TypeError, match="schedule"):
        new_spec(name="a", task="t")
    for bad in ({"bogus": 1}, {"_text": "{}"}):  # unknown, or not an __init__ field
        with pytest.raises(TypeError, match=next(iter(bad))):
            one.with_changes(**bad)


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "x", "version": "7"}', '{"name": "x"}', '{"kwargs": {"version": 7}}',
        '{"description": "\\"version\\": 7}", "name": "x"}', '{"version": -1}',
        '{"version": 7} ', '{"version": \u0667}', 'x "version": 7}', '{"a\\"version": 7}',
        '{"a": 1,"version": 7}', '{"version": 1234567890123456789}',
    ],
)  # fmt: skip
def test_the_version_is_read_from_the_text_alone_only_when_it_is_the_last_key(
    text: str,
) -> None:
    """Else the text is decoded (as the scripts read it: 0 without a version)."""
    assert stored_version(text) is None
    assert stored_version('{"name": "x", "version": 7}') == 7
    assert stored_version('{"version": 12}') == 12


@settings(max_examples=300, deadline=None)
@given(_specs, st.none() | st.integers(0, 10**13), st.none() | st.integers(0, 10**13))
def test_the_due_time_read_from_the_text_alone_is_never_after_the_entrys_next_tick(
    spec: EntrySpec, anchor: int | None, last: int | None
) -> None:
    """A large reassignment decodes the entries it gains in the order of this estimate
    (made without decoding them): never later than the tick the decoded entry is put at,
    and, for an interval entry, that very tick when no start_at, end_at or max_runs puts
    it off (a cron or solar entry's counts from the start of the hour of its base)."""
    state = EntryState(anchor_ms=anchor, last_tick_ms=last, run_count=1)
    real = next_run_ms(spec, state)
    if real is not None:
        assert earliest_due_ms(due_hint(spec.dumps(), state)) <= real
    free = spec.with_changes(start_ms=None, end_ms=None, max_runs=None)
    if (due := next_run_ms(free, state)) is not None and isinstance(
        spec.schedule, IntervalSchedule
    ):
        assert earliest_due_ms(due_hint(free.dumps(), state)) == due


def test_the_schedule_is_read_from_the_text_alone_only_when_it_is_there_for_sure() -> None:
    """Args, kwargs and options may hold a "schedule" or "start_ms" of their own, and a
    newer version may add keys: a key spelled twice, or no schedule object, gives no hint
    (due at once: read first), never a wrong one."""
    spec = EntrySpec(name="x", task="t", schedule=IntervalSchedule(every_ms=60_000))
    text = spec.dumps()
    assert due_fields(text) == ('{"every_ms": 60000, "kind": "interval"}', "")
    assert earliest_due_ms(due_hint(text, EntryState(anchor_ms=1_000))) == 61_000
    assert earliest_due_ms(due_hint(text, None)) == 0  # not anchored: due at once
    assert due_fields(spec.with_changes(start_ms=-5).dumps()) == (due_fields(text)[0], "-5")
    decoy = '"schedule": {"kind": "interval", "every_ms": 5}'
    # a string may spell it: its quotes are escaped, so it is not the key again
    assert due_fields(spec.with_changes(args=(decoy,)).dumps()) == due_fields(text)
    assert due_fields(spec.with_changes(kwargs={"schedule": 1}).dumps()) is None
    both = spec.with_changes(options={"queue": {"start_ms": 2}}, start_ms=3)
    assert due_fields(both.dumps()) is None
    assert earliest_due_ms(due_hint(both.dumps(), EntryState(anchor_ms=1))) == 0
    assert due_fields('{"name": "x"}') is None
    assert due_fields('{"schedule": {"kind": "interval", "every_ms": 5') is None  # no end
    assert due_fields(text[:-1] + ', "x": "\x1f"}') is None  # the script's separator
    assert earliest_due_ms(due_hint('{"schedule": {"kind": "?"}}', EntryState(anchor_ms=1))) == 0


def test_a_cron_entrys_due_time_counts_from_the_start_of_the_hour_of_its_last_tick() -> None:
    """Entries whose last ticks fall in the same hour share one croniter step (~30 µs an
    estimate otherwise): the estimate may be earlier than the tick, never later."""
    hour = 1_800_000_000_000 - 1_800_000_000_000 % 3_600_000  # 2027-01-15T08:00Z
    daily = EntrySpec(name="d", task="t", schedule=CronSchedule(expr="0 9 * * *"))
    often = daily.with_changes(schedule=CronSchedule(expr="*/5 * * * *"))

    def estimate(spec: EntrySpec, last: int) -> int:
        return earliest_due_ms(due_hint(spec.dumps(), EntryState(last_tick_ms=last)))

    assert estimate(daily, hour + 1_800_000) == hour + 3_600_000  # exact: 09:00
    assert estimate(often, hour + 1_920_000) == hour + 300_000  # 08:05, the tick is 08:35
    assert next_run_ms(often, EntryState(last_tick_ms=hour + 1_920_000)) == hour + 2_100_000


@settings(max_examples=300, deadline=None)
@given(_specs, st.integers(10, 400))
def test_stored_json_is_json_size_then_storable(spec: EntrySpec, max_bytes: int) -> None:
    """One encoding for both rules, with their errors (field and message)."""

    def outcome(check: Any) -> tuple[str | None, str] | None:
        try:
            check(spec.with_changes())
        except InvalidEntryError as exc:
            return exc.field, str(exc)
        return None

    def both(s: EntrySpec) -> None:
        rules.json_size(s, max_bytes=max_bytes)
        rules.storable(s)

    assert outcome(lambda s: rules.stored_json(s, max_bytes=max_bytes)) == outcome(both)


class _Pair(NamedTuple):
    a: int
    b: str


class _Level(enum.IntEnum):
    HIGH = 3


@pytest.mark.parametrize(
    "change",
    [
        {"args": (object(),)}, {"kwargs": {"a": {1, 2}}}, {"kwargs": {1: "x", "b": 2}},
        {"options": {"x": object()}}, {"args": (float("nan"),)}, {"misfire_grace_s": float("inf")},
        {"kwargs": {"when": datetime(2030, 1, 1, tzinfo=UTC)}}, {"description": "é\n"},
        {"args": "abc"}, {"args": _Pair(1, "x")}, {"args": [1, (2, 3)]}, {"kwargs": [("a", 1)]},
        {"enabled": 1}, {"max_runs": True}, {"misfire_grace_s": 5}, {"version": _Level.HIGH},
    ],
)  # fmt: skip
def test_stored_json_and_dumps_on_unusual_values(change: dict[str, Any]) -> None:
    spec = EntrySpec(name="e", task="t", schedule=IntervalSchedule(every_ms=1000), **change)
    errors = []
    for check in (
        lambda s: rules.stored_json(s, max_bytes=10_000),
        lambda s: (rules.json_size(s, max_bytes=10_000), rules.storable(s)),
    ):
        try:
            check(spec.with_changes())
            errors.append(None)
        except InvalidEntryError as exc:
            errors.append((exc.field, str(exc)))
    assert errors[0] == errors[1]
    try:
        expected = kjson.dumps(spec.to_json(), sort_keys=True)
    except (TypeError, ValueError):
        with pytest.raises(InvalidEntryError):
            spec.dumps()
    else:
        assert spec.dumps() == expected
