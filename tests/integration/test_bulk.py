"""Bulk writes: :meth:`DynamicTasks.add_many` and the export lines, on a real redis-server."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis
from celery.schedules import solar

from celery_dcron import DynamicTasks, bulk
from celery_dcron.bulk import entry_line, parse_line, validate
from celery_dcron.entries import EntrySpec
from celery_dcron.enums import EntrySource
from celery_dcron.exceptions import (
    BulkInvalidError,
    DcronError,
    InvalidEntryError,
    RegistryUnavailableError,
)
from celery_dcron.registry import scripts
from celery_dcron.registry.scripts import PUT_ENTRIES_MAX, PUT_ENTRIES_MAX_BYTES
from celery_dcron.schedules import CronSchedule, IntervalSchedule
from celery_dcron.ticks import next_tick
from tests.integration.test_api import api_for


@pytest.fixture
def api(redis_url: str) -> DynamicTasks:
    return api_for(redis_url)


def every(n: int, **fields: object) -> list[dict[str, object]]:
    return [{"name": f"e{i:03d}", "task": "t", "every": 60 + i, **fields} for i in range(n)]


def test_add_many_writes_every_entry_as_add_does(api: DynamicTasks) -> None:
    entries = [
        *every(25),
        {"name": "report", "task": "t", "cron": "0 7 * * mon-fri", "tz": "Europe/Paris"},
        {"name": "mail", "payload": {"to": "a@b.c"}, "every": timedelta(seconds=30)},
        EntrySpec(name="spec", task="t", schedule=IntervalSchedule(every_ms=5000),
                  source=EntrySource.DYNAMIC),
    ]  # fmt: skip
    result = api.add_many(entries, chunk=10)
    assert (result.total, result.created, result.replaced, result.ok) == (28, 28, 0, True)
    stored = {spec.name: spec for spec in api.list()}
    assert len(stored) == 28 and {s.version for s in stored.values()} == {1}
    assert stored["mail"].task == "sink" and stored["mail"].kwargs == {"payload": {"to": "a@b.c"}}
    # the same entry through add() in another namespace: the same definition and anchor rule
    other = api_for(api.settings.redis_url, namespace="other")
    other.add("report", "t", cron="0 7 * * mon-fri", tz="Europe/Paris")
    assert other.get("report") == stored["report"]
    states = api.registry.states(["e000", "e001", "report"])
    assert all(states[n].anchor_ms is not None for n in ("e000", "e001", "report"))


def test_one_invalid_entry_writes_nothing_and_every_error_is_named(api: DynamicTasks) -> None:
    entries = [
        *every(5),
        {"name": "bad-cron", "task": "t", "cron": "61 * * * *"},
        {"name": "no-task", "every": 10},
        {"name": "e001", "task": "t", "every": 5},  # twice in the input
        {"task": "t", "every": 5},
        {"name": "late", "task": "t", "at": datetime(2001, 1, 1, tzinfo=timezone.utc)},
        "not an entry",
    ]
    with pytest.raises(BulkInvalidError) as caught:
        api.add_many(entries)
    problems = {(p.index, p.name, p.field) for p in caught.value.problems}
    assert problems == {
        (5, "bad-cron", "cron"),
        (6, "no-task", "task"),
        (7, "e001", "name"),
        (8, None, "name"),
        (9, "late", "at"),
        (10, None, None),
    }
    assert "6 of 11 entries are invalid, nothing written" in str(caught.value)
    assert api.list() == []
    dry = api.add_many(entries, dry_run=True, skip_invalid=True)
    assert dry.dry_run and len(dry.invalid) == 6 and api.list() == []
    skipped = api.add_many(entries, skip_invalid=True)
    assert skipped.created == 5 and len(skipped.invalid) == 6 and not skipped.ok
    assert [s.name for s in api.list()] == [f"e{i:03d}" for i in range(5)]


def test_taken_deleted_and_static_names_are_refused_one_by_one(api: DynamicTasks) -> None:
    api.add("e000", "t", every=10)
    api.mark_deleted("e001")
    api.registry.sync_static([EntrySpec(name="e002", task="t",
                                        schedule=IntervalSchedule(every_ms=1000))])  # fmt: skip
    result = api.add_many(every(5))
    assert result.created == 2 and result.written == 2
    refused = {p.name: (p.index, p.field) for p in result.refused}
    assert refused == {"e000": (0, "name"), "e001": (1, "name"), "e002": (2, "name")}
    assert "tombstoned" in next(p.message for p in result.refused if p.name == "e001")
    assert api.get("e000").schedule == IntervalSchedule(every_ms=10_000)  # kept


def test_replace_overwrites_existing_entries_but_not_deleted_or_static_names(
    api: DynamicTasks,
) -> None:
    api.add("e000", "t", every=10)
    api.update("e000", description="v2")
    api.mark_deleted("e001")
    api.registry.sync_static([EntrySpec(name="e002", task="t",
                                        schedule=IntervalSchedule(every_ms=1000))])  # fmt: skip
    anchor = api.state("e000").anchor_ms
    result = api.add_many(every(4), replace=True)
    assert (result.created, result.replaced) == (1, 1)
    assert {p.name for p in result.refused} == {"e001", "e002"}
    replaced = api.get("e000")
    assert replaced.version == 3 and replaced.schedule == IntervalSchedule(every_ms=60_000)
    assert replaced.description == ""  # replaced, not merged
    assert api.state("e000").anchor_ms == anchor  # anchored once
    again = api.add_many(every(4), replace=True)
    assert again.replaced == 2 and api.get("e003").version == 2


_TEXTS = [
    '{"args": [], "name": "x", "version": 7}', '{"version": 12}', '{"a": 1,"version": 7}',
    '{"args": [1,, "version": 7}', "not json", '{"name": "x"}', '{"version": "7"}',
    '{"kwargs": {"version": 7}}', '{"a\\"version": 7}', '{"version": 7} ',
    '{"version": \u0667}', '{"version": 1234567890123456}', '{"version": 123456789012345}',
    '{"k": "\u00e9", "version": 3}',
]  # fmt: skip


def test_the_client_reads_each_stored_version_as_the_scripts_do(
    api: DynamicTasks, redis_client: redis.Redis
) -> None:
    """A replace sends the version it read; the script compares it with its own reading
    (``version_of``): both read it from the text's end when it ends so, else decode it
    (0 without one, or without JSON). A damaged text is overwritten all the same."""
    from celery_dcron.registry.entries import _stored_version

    for i, text in enumerate(_TEXTS):
        redis_client.hset(api.registry.keys.entries, f"t{i}", text)
    for i, text in enumerate(_TEXTS):  # a new entry's put: refused, with the version read
        status, version = api.registry.transport.call(
            scripts.PUT_ENTRY, [api.registry.keys.events, f"t{i}", "{}", "", "0", 0, 0]
        )
        assert (str(status), int(version)) == ("exists", _stored_version(text)), text
    entries = [{"name": f"t{i}", "task": "t", "every": 9} for i in range(len(_TEXTS))]
    result = api.add_many(entries, replace=True)
    assert result.written == len(_TEXTS) and not result.refused
    assert api.get("t3").schedule == IntervalSchedule(every_ms=9000)
    # each overwrite is numbered by the script: the version it read, plus one
    for i, text in enumerate(_TEXTS):
        stored = redis_client.hget(api.registry.keys.entries, f"t{i}")
        stored = stored.decode() if isinstance(stored, bytes) else stored
        assert stored.endswith(f'"version": {_stored_version(text) + 1}}}'), text
        assert api.get(f"t{i}").version == _stored_version(text) + 1


class _Tagged(EntrySpec):
    """An entry whose JSON has a key after its version."""

    __slots__ = ()

    def dumps(self, *, call: tuple[str, str] | None = None) -> str:
        return EntrySpec.dumps(self, call=call)[:-1] + ', "zz_tag": 1}'


def test_a_replace_of_a_text_not_ending_in_its_version_reads_the_versions_first(
    api: DynamicTasks, redis_client: redis.Redis
) -> None:
    """The script cannot number an overwrite of such a text (it writes the version in
    the text's last key): then the versions are read, and each write compares-and-sets
    on the one read, as a replace did before."""
    reg = api.registry

    def tagged(name: str, every_ms: int) -> _Tagged:
        return _Tagged(name=name, task="t", schedule=IntervalSchedule(every_ms=every_ms))

    assert [r.version for r in reg.put_entries([tagged("a", 1000)])] == [1]  # type: ignore[union-attr]
    api.update("a", every=3)  # version 2
    redis_client.config_resetstat()
    out = reg.put_entries([tagged("a", 2000), tagged("b", 2000)], replace=True)
    assert [r.version for r in out] == [3, 1]  # type: ignore[union-attr]
    assert api.get("a").version == 3 and api.get("a").schedule == IntervalSchedule(every_ms=2000)
    assert redis_client.info("commandstats")["cmdstat_hmget"]["calls"] == 2 + 5  # read, write


def test_a_replace_past_15_digits_of_version_is_numbered_exactly(
    api: DynamicTasks, redis_client: redis.Redis
) -> None:
    """The script numbers an overwrite with a Lua number, exact to 15 digits: a version
    past that (only a raw write makes one) is numbered by the client, compare-and-set on
    the version read, in the same call."""
    from celery_dcron.entrytext import with_version

    key = api.registry.keys.entries
    big = {"last-exact": 999_999_999_999_998, "past": 999_999_999_999_999,
           "huge": 12_345_678_901_234_567_890}  # fmt: skip
    for name, version in big.items():
        api.add(name, "t", every=5)
        text = with_version(_hget(redis_client, key, name), 1, version)
        assert text is not None
        redis_client.hset(key, name, text)
    api.add("small", "t", every=5)
    result = api.add_many(
        [{"name": n, "task": "t", "every": 6} for n in [*big, "small", "new"]], replace=True
    )
    assert (result.replaced, result.created, result.ok) == (4, 1, True)
    for name, version in [*big.items(), ("small", 1)]:
        assert _hget(redis_client, key, name).endswith(f'"version": {version + 1}}}'), name
        assert api.get(name).version == version + 1
        assert api.get(name).schedule == IntervalSchedule(every_ms=6000)


def _hget(client: redis.Redis, key: str, field: str) -> str:
    value = client.hget(key, field)
    assert value is not None
    return value.decode() if isinstance(value, bytes) else str(value)


def test_export_lines_round_trip(api: DynamicTasks) -> None:
    api.add("report", "t", cron="0 7 * * mon-fri", tz="Europe/Paris", args=[1, "x"],
            kwargs={"when": "2030-01-02"}, options={"queue": "q"},
            max_runs=3, after_run="disable", misfire_policy="all", misfire_grace=30,
            description="daily", enabled=False)  # fmt: skip
    api.add("later", "t", at=datetime(2099, 1, 1, tzinfo=timezone.utc))
    api.add("mail", payload={"to": "a@b.c"}, every=30, start_at="2030-01-01T00:00:00+00:00")
    api.update("mail", description="bumped")  # version 2: not part of the export
    api.registry.sync_static([EntrySpec(name="static", task="t",
                                        schedule=IntervalSchedule(every_ms=1000))])  # fmt: skip
    lines = [entry_line(spec) for spec in api.export()]
    assert [parse_line(line)["name"] for line in lines] == ["later", "mail", "report"]
    copy = api_for(api.settings.redis_url, namespace="copy")
    result = copy.add_many(parse_line(line) for line in lines)
    assert result.created == 3 and result.ok
    assert [entry_line(spec) for spec in copy.export()] == lines
    assert {s.name: s.with_changes(version=0) for s in copy.export()} == {
        s.name: s.with_changes(version=0) for s in api.export()
    }


def test_a_line_that_is_not_an_object_is_an_invalid_entry() -> None:
    with pytest.raises(InvalidEntryError, match="not valid JSON"):
        parse_line("{nope")
    with pytest.raises(InvalidEntryError, match="JSON object"):
        parse_line("[1]")


def test_each_chunk_is_one_round_trip(
    api: DynamicTasks, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.registry.load_scripts()
    sent: list[tuple[int, int]] = []  # (thread, commands) of each pipeline sent
    execute = redis.client.Pipeline.execute

    def counted(self: redis.client.Pipeline, raise_on_error: bool = True) -> list[object]:
        sent.append((threading.get_ident(), len(self.command_stack)))
        return execute(self, raise_on_error)

    def sizes() -> list[int]:
        return [size for _, size in sent]

    monkeypatch.setattr(redis.client.Pipeline, "execute", counted)
    redis_client.config_resetstat()
    api.add_many(every(250), chunk=100)
    assert sizes() == [1, 1, 1]  # one pipeline per chunk, one script call for its entries
    stats = redis_client.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 3
    # what the scripts run: per call, one read of each hash for all its entries (the
    # definitions, static marks, tombstones, anchors, last ticks), one write of the
    # definitions and one of the anchors, one of their times in the due index, one bump of
    # the entries version (by the number of records), one trim of the feed, one wake-up;
    # per entry, its feed record
    assert stats["cmdstat_hmget"]["calls"] == 3 * 5 and stats["cmdstat_hset"]["calls"] == 3 * 2
    assert stats["cmdstat_zadd"]["calls"] == 3
    assert stats["cmdstat_publish"]["calls"] == 3 and "cmdstat_hget" not in stats
    assert stats["cmdstat_hincrby"]["calls"] == stats["cmdstat_xtrim"]["calls"] == 3
    assert stats["cmdstat_xadd"]["calls"] == 250
    sent.clear()
    redis_client.config_resetstat()
    api.add_many(every(250), chunk=100, replace=True)
    # replace: the same one round trip per chunk, no version read before it (the script
    # numbers each overwrite)
    assert sizes() == [1, 1, 1]
    stats = redis_client.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 3 and stats["cmdstat_hmget"]["calls"] == 3 * 5
    assert stats["cmdstat_xadd"]["calls"] == 250
    sent.clear()
    many = [{"name": f"m{i:04d}", "task": "t", "every": 5} for i in range(PUT_ENTRIES_MAX + 1)]
    api.add_many(many, chunk=2 * PUT_ENTRIES_MAX)
    assert sizes() == [2]  # a script call takes at most PUT_ENTRIES_MAX entries
    sent.clear()
    # replaced in two script calls of one round trip: each overwrite is numbered and
    # reported by its own call (the second's positions count from its first entry)
    api.update("m0000", every=6)
    api.update(f"m{PUT_ENTRIES_MAX:04d}", every=6)  # the second call's only entry
    valid, _ = validate(api, [*many, {"name": "m-new", "task": "t", "every": 5}])
    out = api.registry.put_entries([spec for _, spec in valid], replace=True)
    assert sizes() == [2]
    assert [r.version for r in out] == [3] + [2] * (PUT_ENTRIES_MAX - 1) + [3, 1]  # type: ignore[union-attr]
    assert [r.name for r in out] == [spec.name for _, spec in valid]  # type: ignore[union-attr]
    assert api.get(f"m{PUT_ENTRIES_MAX:04d}").version == 3 and api.get("m-new").version == 1
    sent.clear()
    blob = "x" * (PUT_ENTRIES_MAX_BYTES // 10)  # under dcron_max_payload_bytes
    big = [
        {"name": f"big{i}", "task": "t", "every": 5, "kwargs": {"blob": blob}} for i in range(12)
    ]
    assert api.add_many(big).created == 12
    assert sizes() == [2]  # ... and about PUT_ENTRIES_MAX_BYTES of them


def test_entries_that_share_a_schedule_are_each_checked_and_named(api: DynamicTasks) -> None:
    entries = [
        {"name": "a", "task": "t", "cron": "0 7 * * *"},
        {"name": "b", "task": "t", "cron": "0 7 * * *", "tz": "Europe/Paris"},
        {"name": "bad-1", "task": "t", "cron": "61 * * * *"},
        {"name": "bad-2", "task": "t", "cron": "61 * * * *"},
        {"name": "bad-3", "task": "t", "cron": "0 7 * * *", "tz": "Nowhere/Else"},
        {"name": "bad-4", "task": "t", "every": True},
        {"name": "bad-5", "task": "t", "every": 1, "args": [datetime(2030, 1, 1)]},
        {"name": "bad-6", "task": "t", "every": 1, "options": {"headers": {"x": object()}}},
        {"name": "c", "task": "t", "every": 1},
        {"name": "d", "task": "t", "every": 1.0},
    ]
    with pytest.raises(BulkInvalidError) as caught:
        api.add_many(entries)
    problems = {p.name: p.field for p in caught.value.problems}
    assert problems == {"bad-1": "cron", "bad-2": "cron", "bad-3": "tz", "bad-4": "every",
                        "bad-5": "args", "bad-6": "options"}  # fmt: skip
    assert all(f"entry {p.name!r}" in p.message for p in caught.value.problems)
    result = api.add_many(entries, skip_invalid=True)
    assert result.created == 4
    stored = {spec.name: spec for spec in api.list()}
    assert stored["a"].schedule == CronSchedule(expr="0 7 * * *", tz="UTC")
    assert stored["b"].schedule == CronSchedule(expr="0 7 * * *", tz="Europe/Paris")
    assert stored["c"].schedule == stored["d"].schedule == IntervalSchedule(every_ms=1000)
    # written as add() writes each: the same stored text
    other = api_for(api.settings.redis_url, namespace="other")
    other.add("b", "t", cron="0 7 * * *", tz="Europe/Paris")
    texts = api.registry.client.hgetall(api.registry.keys.entries)
    assert texts["b"] == other.registry.client.hget(other.registry.keys.entries, "b")


@pytest.mark.parametrize("skip_invalid", [False, True])
def test_chunks_written_at_once_are_reported_as_if_written_one_by_one(
    api: DynamicTasks, skip_invalid: bool
) -> None:
    """Two chunks are written at once, each by its own thread: the result is the one of
    chunks written one after the other (refused entries in the order given); with
    skip_invalid, while the next chunks are validated."""
    api.add("e004", "t", every=10)
    api.mark_deleted("e011")
    result = api.add_many(every(30), chunk=4, skip_invalid=skip_invalid)
    assert (result.total, result.created, result.replaced) == (30, 28, 0)
    assert [(p.index, p.name) for p in result.refused] == [(4, "e004"), (11, "e011")]
    assert [s.name for s in api.list()] == [f"e{i:03d}" for i in range(30) if i != 11]
    again = api.add_many(every(30), chunk=4, replace=True, skip_invalid=skip_invalid)
    assert again.replaced == 29 and [p.name for p in again.refused] == ["e011"]


def test_skip_invalid_writes_each_chunk_while_the_next_ones_are_validated(
    api: DynamicTasks,
) -> None:
    """Without skip_invalid nothing is written before every entry is validated (one
    invalid entry writes nothing); with it, a chunk is written once validated, so the
    writes overlap the validation of the chunks after it, and the invalid entries and
    names given twice are reported wherever they are."""
    seen: dict[int, int] = {}  # entry index -> entries stored when it was validated

    def stored(wait_for: int) -> int:
        deadline = time.monotonic() + 5  # (the writers run while this one sleeps)
        while (count := len(api.list())) < wait_for and time.monotonic() < deadline:
            time.sleep(0.01)
        return count

    def entries(bad_at: int, wait: bool = False) -> Iterator[dict[str, object]]:
        for i in range(60):
            if i % 10 == 0:  # chunk 1 is written by #40 (four chunks are sent by then)
                seen[i] = stored(10 if wait and i >= 40 else 0)
            if i == bad_at:
                yield {"name": f"x{i}", "task": "t", "every": -1}
            elif i == 45:
                yield {"name": "e001", "task": "t", "every": 5}  # given at #1 already
            else:
                yield {"name": f"e{i:03d}", "task": "t", "every": 60}

    with pytest.raises(BulkInvalidError):
        api.add_many(entries(bad_at=55), chunk=10)
    assert set(seen.values()) == {0} and api.list() == []  # nothing, even at the end
    result = api.add_many(entries(bad_at=33, wait=True), chunk=10, skip_invalid=True)
    assert [(p.index, p.field) for p in result.invalid] == [(33, "every"), (45, "name")]
    assert (result.total, result.created) == (60, 58)
    assert seen[0] == 0 and seen[40] >= 10
    assert len(api.list()) == 58


@pytest.mark.parametrize("skip_invalid", [False, True])
def test_a_redis_error_is_raised_as_when_all_is_one_chunk(
    api: DynamicTasks, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch,
    skip_invalid: bool,
) -> None:  # fmt: skip
    """The error Redis gives a chunk reaches the caller as when every entry is in one chunk
    (written without a thread), once the chunks under way are done; the chunks after it
    are not written, and no thread is left behind."""
    api.registry.load_scripts()
    threads = threading.active_count()
    redis_client.set(api.registry.keys.feed, "not a stream")  # each script call fails
    errors = []
    for prefix, chunk in (("one", 1000), ("many", 7)):
        entries = [{"name": f"{prefix}{i}", "task": "t", "every": 5} for i in range(40)]
        with pytest.raises(redis.exceptions.ResponseError) as caught:
            api.add_many(entries, chunk=chunk, skip_invalid=skip_invalid)
        errors.append(caught.value)
    assert type(errors[0]) is type(errors[1]) and str(errors[0]) == str(errors[1])
    assert threading.active_count() == threads
    redis_client.delete(api.registry.keys.feed)

    calls: list[str] = []
    put = api.registry.put_entries

    def unreachable_at_the_third(
        specs: list[EntrySpec], *, replace: bool = False, since_ms: int | None = None
    ) -> list[EntrySpec | DcronError]:
        calls.append(specs[0].name)
        if len(calls) == 3:
            raise RegistryUnavailableError("dcron: Redis unreachable: test")
        return put(specs, replace=replace, since_ms=since_ms)

    monkeypatch.setattr(api.registry, "put_entries", unreachable_at_the_third)
    with pytest.raises(RegistryUnavailableError):
        api.add_many(every(100), chunk=10, skip_invalid=skip_invalid)
    # the ones beside the third may have been under way
    beside = (bulk._STREAM_IN_FLIGHT if skip_invalid else bulk._IN_FLIGHT) - 1
    assert 3 <= len(calls) <= 3 + beside
    assert len([s for s in api.list() if s.name.startswith("e")]) == 10 * (len(calls) - 1)
    assert threading.active_count() == threads


def test_text_beyond_ascii_and_kombu_typed_options_are_written_as_add_writes_them(
    api: DynamicTasks,
) -> None:
    since = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    fields: dict[str, Any] = {
        "every": 5, "args": ["é", "line\nbreak", '"quoted"'], "kwargs": {"ключ": "値"},
        "options": {"headers": {"since": since}},
    }  # fmt: skip
    entries = [{"name": "café-ü", "task": "t", **fields}, {"name": "plain", "task": "t", **fields}]
    assert api.add_many(entries, chunk=1).created == 2
    other = api_for(api.settings.redis_url, namespace="other")
    other.add("café-ü", "t", **fields)
    texts = api.registry.client.hgetall(api.registry.keys.entries)
    assert texts["café-ü"] == other.registry.client.hget(other.registry.keys.entries, "café-ü")
    assert api.get("café-ü").options["headers"]["since"] == since
    assert api.get("plain").with_changes(name="café-ü") == other.get("café-ü")


def test_the_garbage_collector_is_paused_while_adding_then_left_as_it_was(
    api: DynamicTasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    enabled: list[bool] = []
    put = api.registry.put_entries

    def spy(
        specs: list[EntrySpec], *, replace: bool = False, since_ms: int | None = None
    ) -> list[EntrySpec | DcronError]:
        enabled.append(gc.isenabled())
        return put(specs, replace=replace, since_ms=since_ms)

    monkeypatch.setattr(api.registry, "put_entries", spy)
    assert gc.isenabled()
    assert api.add_many(every(5), chunk=2).created == 5
    assert enabled == [False] * 3 and gc.isenabled()
    with pytest.raises(BulkInvalidError):
        api.add_many([{"name": "bad", "task": "t", "every": -1}])
    assert gc.isenabled()
    gc.disable()
    try:
        assert api.add_many(every(5), replace=True).replaced == 5
        assert not gc.isenabled()  # off before: left off
    finally:
        gc.enable()


@pytest.mark.parametrize("skip_invalid", [False, True])
@pytest.mark.parametrize(
    ("kind", "reads"),
    [("cron", 1), ("cron-replace", 1), ("cron-replace-one-chunk", 1), ("every", 0), ("solar", 0)],
)
def test_the_server_time_for_first_ticks_is_read_once_per_call(
    api: DynamicTasks, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch,
    kind: str, reads: int, skip_invalid: bool,
) -> None:  # fmt: skip
    """add_many reads the server's time once (not once per chunk) when it writes new cron
    entries, each given its first tick in the due index (replacing them too, also in one
    chunk); interval and solar entries need none."""
    cron = {"cron": "0 4 * * *"}
    schedule: dict[str, object] = {
        "cron": cron, "cron-replace": cron, "cron-replace-one-chunk": cron,
        "every": {"every": 60}, "solar": {"schedule": solar("sunrise", 48.85, 2.35)},
    }[kind]  # fmt: skip
    times: list[int] = []
    server_ms = api.registry.transport.server_ms

    def counted() -> int:
        times.append(1)
        return server_ms()

    monkeypatch.setattr(api.registry.transport, "server_ms", counted)
    monkeypatch.setattr(api.registry, "server_ms", counted)
    entries = [{"name": f"e{i}", "task": "t", **schedule} for i in range(25)]
    one_chunk = kind == "cron-replace-one-chunk"
    result = api.add_many(
        entries, chunk=25 if one_chunk else 7, replace="replace" in kind, skip_invalid=skip_invalid
    )
    assert result.created == 25 and len(times) == reads
    due = {
        (n.decode() if isinstance(n, bytes) else n): score
        for n, score in redis_client.zrange(api.registry.keys.due, 0, -1, withscores=True)
    }
    assert len(due) == 25
    if kind.startswith("cron"):
        anchors = {n: st.anchor_ms for n, st in api.registry.states().items()}
        spec = api.get("e0")
        assert all(due[n] == next_tick(spec.schedule, a) for n, a in anchors.items())  # type: ignore[arg-type]


@pytest.mark.parametrize("skip_invalid", [False, True])
def test_the_chunks_of_one_add_share_each_schedules_first_tick(
    api: DynamicTasks, monkeypatch: pytest.MonkeyPatch, skip_invalid: bool
) -> None:
    """Cron entries spread over many chunks, a few expressions each: each distinct
    expression's first tick is computed once per add_many call (a croniter step is
    ~30-60 µs), not once per chunk."""
    from celery_dcron.registry import entries as store

    computed: list[str] = []
    real = store.first_tick_bound

    def counted(schedule: CronSchedule, since_ms: int) -> int:
        computed.append(schedule.expr)
        return real(schedule, since_ms)

    store._bound.cache_clear()
    monkeypatch.setattr(store, "first_tick_bound", counted)
    entries = [{"name": f"e{i:03d}", "task": "t", "cron": f"{i % 7} 4 * * *"} for i in range(140)]
    assert api.add_many(entries, chunk=10, skip_invalid=skip_invalid).created == 140
    assert sorted(computed) == sorted(f"{m} 4 * * *" for m in range(7))
    due = api.registry.due_range(0, 2**62, count=200)  # due after 0: each has its first tick
    assert len(due) == 140
    computed.clear()  # the chunks of a replace share one time too (not read per chunk)
    again = api.add_many(entries, chunk=10, replace=True, skip_invalid=skip_invalid)
    assert again.replaced == 140
    assert sorted(computed) == sorted(f"{m} 4 * * *" for m in range(7))
