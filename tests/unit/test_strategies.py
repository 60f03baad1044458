"""Ownership strategies (G4): exact properties with hypothesis, measured bounds.

Exact properties (random examples): deterministic; independent of the order of
``nodes``, of duplicates in it and of ``PYTHONHASHSEED``; every entry owned by a
node of the set; no nodes, no owners; ``owner`` agrees with ``assign``; for
consistent_hash / rendezvous / hash_slot / weighted a join moves entries only to
the new node and a leave moves only the leaver's entries.

Statistical bounds (10,000 entries, 3..10 nodes, ``derandomize=True`` so a run
is reproducible): each strategy module's docstring states the bound, the value
measured over 1,000 random node sets, and the margin; the constants below are
those bounds.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import types
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celery_dcron.engine.names import Names
from celery_dcron.exceptions import ConfigurationError
from celery_dcron.interfaces import NodeRef, Strategy
from celery_dcron.strategies import (
    STRATEGIES,
    ConsistentHashStrategy,
    HashSlotStrategy,
    RangeStrategy,
    RendezvousStrategy,
    RoundRobinStrategy,
    WeightedStrategy,
    get_strategy,
)
from celery_dcron.strategies.hash_slot import slot_of

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class FakeNode:
    """A NodeRef: what a strategy sees of a node."""

    id: str
    weight: float = 1.0


def nodes_of(ids: Sequence[str], weight: float = 1.0) -> list[NodeRef]:
    return [FakeNode(node_id, weight) for node_id in ids]


ALL = sorted(STRATEGIES)
#: owner() answers for one entry alone.
PER_ENTRY = ["consistent_hash", "hash_slot", "modulo", "rendezvous", "weighted"]
#: Need the whole entry list: owner() raises, assign() is exact.
WHOLE_LIST = ["range", "round_robin"]
#: A join moves entries only to the new node; a leave only the leaver's entries.
STABLE = ["consistent_hash", "hash_slot", "rendezvous", "weighted"]

# -- bounds asserted (see each strategy module's docstring) --------------------
#: max load / mean load, 10,000 entries over 3..10 nodes of weight 1.
MAX_LOAD_FACTOR = {
    "consistent_hash": 1.5,
    "rendezvous": 1.2,
    "hash_slot": 1.25,
    "modulo": 1.2,
    "weighted": 1.2,
}
#: moved fraction x (N+1) when node N+1 joins (1.0 is the minimum possible).
JOIN_MOVE_FACTOR = {
    "consistent_hash": 1.5,
    "rendezvous": 1.2,
    "hash_slot": 1.25,
    "weighted": 1.2,
}
#: A join moves at least this fraction (3..10 nodes): far above 1/(N+1).
JOIN_MOVES_AT_LEAST = {"modulo": 0.6, "round_robin": 0.7, "range": 0.25}

ENTRY_COUNT = 10_000

node_id = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=16)
node_id_lists = st.lists(node_id, min_size=1, max_size=12, unique=True)
entry_lists = st.lists(st.text(max_size=24), max_size=60, unique=True)
salts = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-_", max_size=12)
weights = st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0])
#: Realistic node ids for the statistical tests: hostnames, uuids, short names.
host_ids = st.one_of(
    st.builds("beat@host{}-{}".format, st.integers(0, 99), st.integers(0, 10**6)),
    st.uuids().map(lambda u: u.hex),
    st.text(alphabet="abcdefghij0123456789-_.", min_size=1, max_size=12),
)
slow = settings(
    max_examples=16, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


def names(salt: str, count: int = ENTRY_COUNT) -> list[str]:
    return [f"{salt}.task-{i}" for i in range(count)]


def loads(assignment: Mapping[str, str], ids: Sequence[str]) -> Counter[str]:
    counter = Counter(dict.fromkeys(ids, 0))
    counter.update(assignment.values())
    return counter


def moved(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    return [entry for entry, owner in before.items() if after[entry] != owner]


# -- exact properties, every strategy ------------------------------------------


@pytest.mark.parametrize("name", ALL)
@given(entries=entry_lists, ids=node_id_lists, data=st.data())
@settings(max_examples=30, deadline=None)
def test_assign_is_deterministic_and_order_independent(
    name: str, entries: list[str], ids: list[str], data: st.DataObject
) -> None:
    nodes = nodes_of(ids)
    result = get_strategy(name).assign(entries, nodes)
    shuffled_nodes = data.draw(st.permutations(nodes))
    shuffled_entries = data.draw(st.permutations(entries))
    assert get_strategy(name).assign(entries, shuffled_nodes) == result
    assert dict(get_strategy(name).assign(shuffled_entries, nodes)) == dict(result)
    assert get_strategy(name).assign(entries, nodes + nodes[:1]) == result  # duplicate node
    assert set(result) == set(entries)
    assert set(result.values()) <= set(ids)


@pytest.mark.parametrize("name", ALL)
@given(entries=entry_lists)
@settings(max_examples=10, deadline=None)
def test_no_nodes_no_owners(name: str, entries: list[str]) -> None:
    strategy = get_strategy(name)
    assert dict(strategy.assign(entries, [])) == {}
    if name in PER_ENTRY:
        assert all(strategy.owner(entry, []) is None for entry in entries)


@pytest.mark.parametrize("name", ALL)
@given(entries=entry_lists.filter(bool), node=node_id)
@settings(max_examples=10, deadline=None)
def test_one_node_owns_everything(name: str, entries: list[str], node: str) -> None:
    assert set(get_strategy(name).assign(entries, nodes_of([node])).values()) == {node}


@pytest.mark.parametrize("name", PER_ENTRY)
@given(entries=entry_lists, ids=node_id_lists, ws=st.lists(weights, min_size=12, max_size=12))
@settings(max_examples=40, deadline=None)
def test_owner_agrees_with_assign(
    name: str, entries: list[str], ids: list[str], ws: list[float]
) -> None:
    nodes = [FakeNode(node_id, w) for node_id, w in zip(ids, ws, strict=False)]
    strategy = get_strategy(name)
    result = strategy.assign(entries, nodes)
    assert {entry: strategy.owner(entry, nodes) for entry in entries} == dict(result)


@pytest.mark.parametrize("name", WHOLE_LIST)
def test_whole_list_strategies_refuse_owner(name: str) -> None:
    strategy = get_strategy(name)
    assert getattr(strategy, "needs_all_entries", False) is True
    with pytest.raises(NotImplementedError, match=r"call assign\(entries, nodes\)"):
        strategy.owner("report", nodes_of(["a", "b"]))


@pytest.mark.parametrize("name", PER_ENTRY)
def test_per_entry_strategies_do_not_need_all_entries(name: str) -> None:
    assert not getattr(get_strategy(name), "needs_all_entries", False)


@pytest.mark.parametrize("name", ALL)
def test_bad_weights_never_raise(name: str) -> None:
    nodes = [FakeNode("a", math.nan), FakeNode("b", -1.0), FakeNode("c", math.inf), FakeNode("d")]
    result = get_strategy(name).assign(names("w", 200), nodes)
    assert set(result.values()) <= {"a", "b", "c", "d"}
    assert len(result) == 200


def test_independent_of_hash_randomisation() -> None:
    """Two interpreters with different PYTHONHASHSEED compute the same assignments."""
    script = textwrap.dedent(
        """
        import json
        from dataclasses import dataclass
        from celery_dcron.strategies import STRATEGIES, get_strategy

        @dataclass(frozen=True)
        class N:
            id: str
            weight: float = 1.0

        nodes = [N("beat@a", 1.0), N("beat@b", 2.0), N("c", 0.5), N("d\u00e9", 1.0)]
        entries = [f"proj.tasks.job-{i}" for i in range(300)]
        print(json.dumps({n: get_strategy(n).assign(entries, nodes) for n in sorted(STRATEGIES)}))
        """
    )
    outputs = []
    for seed in ("1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        outputs.append(proc.stdout)
    assert outputs[0] == outputs[1]


#: Assignments must never change between releases: instances of two versions in one
#: cluster (a rolling upgrade) must agree on every owner. Owner of job-0 .. job-15 over
#: beat@host-a, beat@host-b (weight 2), beat@host-c, by the last letter of its id.
GOLDEN = {
    "consistent_hash": "ccabbcacaabcbaba",
    "hash_slot": "cbbaaabcbbcccccc",
    "modulo": "abcabccbaaabaabc",
    "range": "aabbbcccccaaaabb",
    "rendezvous": "bcaaacccabcaaacc",
    "round_robin": "abcabcabcacabcab",
    "weighted": "bbbaacccabcaaacc",
}


@pytest.mark.parametrize("name", ALL)
def test_golden_assignments(name: str) -> None:
    nodes = [FakeNode("beat@host-a"), FakeNode("beat@host-b", 2.0), FakeNode("beat@host-c")]
    entries = [f"job-{i}" for i in range(16)]
    result = get_strategy(name).assign(entries, nodes)
    assert "".join(result[entry][-1] for entry in entries) == GOLDEN[name]


# -- the hash functions are the documented ones ----------------------------------

M32 = 0xFFFFFFFF


def ref_hash64(text: str) -> int:
    return int.from_bytes(blake2b(text.encode(), digest_size=8).digest(), "big")


def ref_pair_score(entry: str, node: str) -> int:
    """The rendezvous score of one pair, one pair at a time (the spec of the packed lanes)."""
    x = (ref_hash64(entry) >> 32) ^ (ref_hash64(node) >> 32)
    for multiplier in (0x9E3779B1, 0x85EBCA77):
        product = x * multiplier
        x = (product ^ (product >> 32)) & M32
    return x


@given(entries=entry_lists, ids=node_id_lists)
@settings(max_examples=40, deadline=None)
def test_rendezvous_matches_pairwise_reference(entries: list[str], ids: list[str]) -> None:
    result = RendezvousStrategy().assign(entries, nodes_of(ids))
    for entry in entries:
        assert result[entry] == max(ids, key=lambda node: (ref_pair_score(entry, node), node))


def test_rendezvous_and_weighted_match_reference_with_many_nodes() -> None:
    """150 nodes: the packed lanes hold at every position (no carry between lanes)."""
    ids = [f"node-{i}" for i in range(150)]
    entries = names("many", 200)
    plain = RendezvousStrategy().assign(entries, nodes_of(ids))
    weighted = WeightedStrategy().assign(
        entries, [FakeNode(i, 1.0 + n % 7) for n, i in enumerate(ids)]
    )
    weight_of = {i: 1.0 + n % 7 for n, i in enumerate(ids)}
    for entry in entries:
        scores = {node: ref_pair_score(entry, node) for node in ids}
        assert plain[entry] == max(ids, key=lambda node: (scores[node], node))
        assert weighted[entry] == max(
            ids,
            key=lambda node: (
                weight_of[node] / (33 * math.log(2) - math.log(2 * scores[node] + 1)),
                scores[node],
                node,
            ),
        )


@pytest.mark.parametrize(
    "weight_choices",
    [
        st.sampled_from([1.0, 2.0]),  # few distinct weights: one max() per weight group
        st.floats(0.01, 100.0),  # all distinct: every lane scored
        st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0, math.nan, -1.0, math.inf, 1e9]),
    ],
)
@given(entries=entry_lists, ids=node_id_lists, data=st.data())
@settings(max_examples=40, deadline=None)
def test_weighted_matches_pairwise_reference(
    weight_choices: st.SearchStrategy[float],
    entries: list[str],
    ids: list[str],
    data: st.DataObject,
) -> None:
    """Score = -w / ln(h), h = (s + 1/2) / 2**32, computed as w / (33 ln 2 - ln(2s + 1))."""
    ws = data.draw(st.lists(weight_choices, min_size=len(ids), max_size=len(ids)))
    nodes = [FakeNode(i, w) for i, w in zip(ids, ws, strict=True)]
    result = WeightedStrategy().assign(entries, nodes)

    def clean(weight: float) -> float:
        if not (weight > 0 and math.isfinite(weight)):
            return 1.0
        return min(max(weight, 0.001), 1000.0)

    weight_of = {node.id: clean(node.weight) for node in nodes}

    def key(entry: str, node: str) -> tuple[float, int, str]:
        s = ref_pair_score(entry, node)
        return weight_of[node] / (33 * math.log(2) - math.log(2 * s + 1)), s, node

    for entry in entries:
        assert result[entry] == max(ids, key=lambda node: key(entry, node))


def test_hash_slot_is_redis_cluster_crc16() -> None:
    # Redis Cluster: CLUSTER KEYSLOT foo = 12182, bar = 5061, 123456789 -> 0x31C3.
    assert slot_of("foo") == 12182
    assert slot_of("bar") == 5061
    assert slot_of("123456789") == 0x31C3


@given(entries=entry_lists, ids=node_id_lists)
@settings(max_examples=30, deadline=None)
def test_hash_slot_entries_follow_their_slot(entries: list[str], ids: list[str]) -> None:
    strategy = HashSlotStrategy()
    table = strategy.slot_table(nodes_of(ids))
    assert len(table) == 16384
    result = strategy.assign(entries, nodes_of(ids))
    assert all(result[entry] == table[slot_of(entry)] for entry in entries)


# -- exact movement properties -----------------------------------------------------


@pytest.mark.parametrize("name", STABLE)
@given(ids=node_id_lists, new=node_id, salt=salts, w=weights)
@settings(max_examples=25, deadline=None)
def test_join_moves_entries_only_to_the_new_node(
    name: str, ids: list[str], new: str, salt: str, w: float
) -> None:
    if new in ids:
        return
    entries = names(salt, 300)
    strategy = get_strategy(name)
    before = strategy.assign(entries, nodes_of(ids))
    after = strategy.assign(entries, [*nodes_of(ids), FakeNode(new, w)])
    assert {after[entry] for entry in moved(before, after)} <= {new}


@pytest.mark.parametrize("name", STABLE)
@given(ids=node_id_lists.filter(lambda ids: len(ids) > 1), data=st.data(), salt=salts)
@settings(max_examples=25, deadline=None)
def test_leave_moves_only_the_leavers_entries(
    name: str, ids: list[str], data: st.DataObject, salt: str
) -> None:
    gone = data.draw(st.sampled_from(ids))
    ws = data.draw(st.lists(weights, min_size=len(ids), max_size=len(ids)))
    nodes = [FakeNode(i, w) for i, w in zip(ids, ws, strict=True)]
    entries = names(salt, 300)
    strategy = get_strategy(name)
    before = strategy.assign(entries, nodes)
    after = strategy.assign(entries, [node for node in nodes if node.id != gone])
    assert moved(before, after) == [e for e in entries if before[e] == gone]


@pytest.mark.parametrize("name", ["consistent_hash", "weighted"])
@given(ids=node_id_lists, data=st.data(), salt=salts)
@settings(max_examples=30, deadline=None)
def test_raising_a_weight_moves_entries_only_to_that_node(
    name: str, ids: list[str], data: st.DataObject, salt: str
) -> None:
    heavy = data.draw(st.sampled_from(ids))
    entries = names(salt, 300)
    strategy = get_strategy(name)
    before = strategy.assign(entries, nodes_of(ids))
    after = strategy.assign(entries, [FakeNode(i, 2.5 if i == heavy else 1.0) for i in ids])
    assert {after[entry] for entry in moved(before, after)} <= {heavy}


@given(entries=entry_lists, ids=node_id_lists, w=weights)
@settings(max_examples=30, deadline=None)
def test_weighted_with_equal_weights_is_rendezvous(
    entries: list[str], ids: list[str], w: float
) -> None:
    assert WeightedStrategy().assign(entries, nodes_of(ids, w)) == RendezvousStrategy().assign(
        entries, nodes_of(ids)
    )


@given(ids=node_id_lists, salt=salts, vnodes=st.integers(1, 400))
@settings(max_examples=20, deadline=None)
def test_consistent_hash_vnodes_scale_with_weight(ids: list[str], salt: str, vnodes: int) -> None:
    strategy = ConsistentHashStrategy(virtual_nodes=vnodes)
    ring = strategy.ring([FakeNode(ids[0], 2.0), *nodes_of(ids[1:])])
    assert ring is not None
    positions, owners = ring
    points = Counter(owners[:-1])  # the last is the wrap-around sentinel
    assert points[ids[0]] == 2 * vnodes
    assert all(points[i] == vnodes for i in ids[1:])
    assert positions == sorted(positions)


# -- round_robin and range: exact balance, and what they move -------------------------


@pytest.mark.parametrize("name", WHOLE_LIST)
@given(entries=entry_lists, ids=node_id_lists)
@settings(max_examples=40, deadline=None)
def test_whole_list_strategies_balance_within_one(
    name: str, entries: list[str], ids: list[str]
) -> None:
    counts = loads(get_strategy(name).assign(entries, nodes_of(ids)), ids).values()
    assert max(counts) - min(counts) <= 1


@given(entries=entry_lists.filter(bool), ids=node_id_lists)
@settings(max_examples=30, deadline=None)
def test_range_owns_contiguous_runs_in_sorted_id_order(entries: list[str], ids: list[str]) -> None:
    result = RangeStrategy().assign(entries, nodes_of(ids))
    ranks = [sorted(ids).index(result[name]) for name in sorted(entries)]
    assert ranks == sorted(ranks)


@given(ids=node_id_lists.filter(lambda ids: len(ids) > 1), salt=salts)
@settings(max_examples=20, deadline=None)
def test_round_robin_adding_an_entry_that_sorts_first_moves_every_entry(
    ids: list[str], salt: str
) -> None:
    entries = names(salt + "x", 200)
    strategy = RoundRobinStrategy()
    before = strategy.assign(entries, nodes_of(ids))
    after = strategy.assign([salt, *entries], nodes_of(ids))  # salt sorts before salt + "x..."
    assert len(moved(before, after)) == len(entries)


@given(ids=node_id_lists, salt=salts, extra=st.text(max_size=24))
@settings(max_examples=30, deadline=None)
def test_range_adding_an_entry_moves_at_most_one_entry_per_boundary(
    ids: list[str], salt: str, extra: str
) -> None:
    entries = names(salt, 200)
    if extra in entries:
        return
    strategy = RangeStrategy()
    before = strategy.assign(entries, nodes_of(ids))
    after = strategy.assign([*entries, extra], nodes_of(ids))
    assert len(moved(before, after)) <= len(ids) - 1


# -- statistical bounds (10,000 entries, 3..10 nodes) ----------------------------------


@pytest.mark.parametrize("name", sorted(JOIN_MOVE_FACTOR))
@given(ids=st.lists(host_ids, min_size=4, max_size=11, unique=True), salt=salts)
@slow
def test_balance_and_join_movement_bounds(name: str, ids: list[str], salt: str) -> None:
    *old, new = ids
    count = len(old)
    entries = names(salt)
    strategy = get_strategy(name)
    before = strategy.assign(entries, nodes_of(old))
    assert max(loads(before, old).values()) <= MAX_LOAD_FACTOR[name] * ENTRY_COUNT / count
    after = strategy.assign(entries, nodes_of(ids))
    changed = moved(before, after)
    assert {after[entry] for entry in changed} <= {new}
    assert len(changed) <= JOIN_MOVE_FACTOR[name] * ENTRY_COUNT / (count + 1)


@given(ids=st.lists(host_ids, min_size=3, max_size=10, unique=True), salt=salts)
@slow
def test_modulo_balance_bound(ids: list[str], salt: str) -> None:
    result = get_strategy("modulo").assign(names(salt), nodes_of(ids))
    assert max(loads(result, ids).values()) <= MAX_LOAD_FACTOR["modulo"] * ENTRY_COUNT / len(ids)


@pytest.mark.parametrize("name", sorted(JOIN_MOVES_AT_LEAST))
@given(ids=st.lists(host_ids, min_size=4, max_size=11, unique=True), salt=salts)
@slow
def test_modulo_round_robin_range_move_more_on_join(name: str, ids: list[str], salt: str) -> None:
    *old, new = ids
    entries = names(salt)
    strategy = get_strategy(name)
    before = strategy.assign(entries, nodes_of(old))
    after = strategy.assign(entries, nodes_of(ids))
    changed = moved(before, after)
    assert len(changed) >= JOIN_MOVES_AT_LEAST[name] * ENTRY_COUNT
    assert len(changed) > 1.2 * ENTRY_COUNT / (len(old) + 1)  # above the minimal share
    assert {after[entry] for entry in changed} != {new}  # and not only to the new node


@given(ids=st.lists(host_ids, min_size=3, max_size=10, unique=True), salt=salts)
@slow
def test_weighted_double_weight_gets_double_share(ids: list[str], salt: str) -> None:
    heavy, *light = ids
    result = WeightedStrategy().assign(names(salt), [FakeNode(heavy, 2.0), *nodes_of(light)])
    counts = loads(result, ids)
    ratio = counts[heavy] / (sum(counts[i] for i in light) / len(light))
    assert 1.7 <= ratio <= 2.3


@given(ids=st.lists(host_ids, min_size=3, max_size=10, unique=True), salt=salts)
@slow
def test_consistent_hash_double_weight_gets_about_double_share(ids: list[str], salt: str) -> None:
    heavy, *light = ids
    result = ConsistentHashStrategy().assign(names(salt), [FakeNode(heavy, 2.0), *nodes_of(light)])
    counts = loads(result, ids)
    ratio = counts[heavy] / (sum(counts[i] for i in light) / len(light))
    assert 1.4 <= ratio <= 2.8


@pytest.mark.parametrize(("name", "factor"), [("weighted", 1.25), ("consistent_hash", 1.5)])
@given(
    ids=st.lists(host_ids, min_size=4, max_size=11, unique=True),
    ws=st.lists(st.sampled_from([1.0, 2.0, 3.0]), min_size=11, max_size=11),
    salt=salts,
)
@slow
def test_weighted_shares_and_join_movement_bounds(
    name: str, factor: float, ids: list[str], ws: list[float], salt: str
) -> None:
    nodes = [FakeNode(i, w) for i, w in zip(ids, ws, strict=False)]
    *old, new = nodes
    total = sum(node.weight for node in old)
    entries = names(salt)
    strategy = get_strategy(name)
    before = strategy.assign(entries, old)
    counts = loads(before, [node.id for node in old])
    for node in old:
        assert counts[node.id] <= factor * ENTRY_COUNT * node.weight / total
    after = strategy.assign(entries, nodes)
    expected_share = new.weight / (total + new.weight)
    assert len(moved(before, after)) <= factor * expected_share * ENTRY_COUNT


# -- get_strategy -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_get_strategy_by_name(name: str) -> None:
    strategy = get_strategy(name)
    assert strategy.name == name
    assert isinstance(strategy, STRATEGIES[name])
    assert name in repr(strategy) or type(strategy).__name__ in repr(strategy)


def test_get_strategy_accepts_spelling_variants_and_virtual_nodes() -> None:
    assert isinstance(get_strategy(" Consistent-Hash "), ConsistentHashStrategy)
    default = get_strategy("consistent_hash")
    assert isinstance(default, ConsistentHashStrategy)
    assert default.virtual_nodes == 160
    custom = get_strategy("consistent_hash", virtual_nodes=40)
    assert isinstance(custom, ConsistentHashStrategy)
    assert custom.virtual_nodes == 40


def test_default_strategy_is_consistent_hash() -> None:
    from celery_dcron.strategies import DEFAULT_STRATEGY

    assert DEFAULT_STRATEGY == "consistent_hash"


@pytest.mark.parametrize("bad", ["x", "consistent", "", "   "])
def test_unknown_strategy_names_the_setting_and_the_choices(bad: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        get_strategy(bad)
    message = str(info.value)
    assert message.startswith("dcron_strategy: ")
    assert all(name in message for name in STRATEGIES)
    if bad.strip():
        assert f"unknown strategy {bad!r}; use one of consistent_hash" in message


@pytest.mark.parametrize("bad", [0, -5, True, 2.5])
def test_bad_virtual_nodes_names_the_setting(bad: object) -> None:
    with pytest.raises(ConfigurationError, match=r"^dcron_virtual_nodes: "):
        get_strategy("consistent_hash", virtual_nodes=bad)  # type: ignore[arg-type]


class PluginStrategy:
    name = "plugin"

    def owner(self, entry: str, nodes: Sequence[NodeRef]) -> str | None:
        return min((node.id for node in nodes), default=None)

    def assign(self, entries: Sequence[str], nodes: Sequence[NodeRef]) -> dict[str, str]:
        owner = self.owner("", nodes)
        return {} if owner is None else dict.fromkeys(entries, owner)


class NoAssign:
    name = "broken"


class NeedsArguments(PluginStrategy):
    def __init__(self, required: int) -> None:
        self.required = required


@pytest.fixture
def plugin_module(monkeypatch: pytest.MonkeyPatch) -> str:
    module = types.ModuleType("dcron_test_plugin")
    module.PluginStrategy = PluginStrategy  # type: ignore[attr-defined]
    module.NoAssign = NoAssign  # type: ignore[attr-defined]
    module.NeedsArguments = NeedsArguments  # type: ignore[attr-defined]
    module.instance = PluginStrategy()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "dcron_test_plugin", module)
    return "dcron_test_plugin"


@pytest.mark.parametrize(
    "path",
    [
        "dcron_test_plugin:PluginStrategy",
        "dcron_test_plugin.PluginStrategy",
        "dcron_test_plugin:instance",
    ],
)
def test_get_strategy_loads_a_dotted_path(plugin_module: str, path: str) -> None:
    strategy: Strategy = get_strategy(path)
    assert isinstance(strategy, PluginStrategy)
    assert strategy.assign(["a"], nodes_of(["n2", "n1"])) == {"a": "n1"}


def test_get_strategy_loads_a_builtin_class_by_path() -> None:
    path = "celery_dcron.strategies.rendezvous:RendezvousStrategy"
    assert isinstance(get_strategy(path), RendezvousStrategy)


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("no_such_module_dcron:Thing", "cannot import 'no_such_module_dcron:Thing'"),
        ("dcron_test_plugin:Missing", "has no attribute 'Missing'"),
        ("dcron_test_plugin:NoAssign", "has no assign(entries, nodes) method"),
        ("dcron_test_plugin:NeedsArguments", "must be a class built without arguments"),
        ("dcron_test_plugin:", "is not a dotted path"),
    ],
)
def test_bad_dotted_paths_name_the_setting(plugin_module: str, path: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        get_strategy(path)
    assert str(info.value).startswith("dcron_strategy: ")
    assert fragment in str(info.value)


# -- the ring index (names by arc) ---------------------------------------------------


def test_the_ring_index_finds_the_names_assign_gives_each_node() -> None:
    """Every name's owner by arcs is the one ``assign`` computes, for node sets that cut
    arcs (so both the one-owner arcs and the names hashed one by one are covered), after
    removals too, and for a node that is not on the ring."""
    strategy = ConsistentHashStrategy()
    names = Names((f"entry-{i}" for i in range(20_000)), strategy=strategy)
    for i in range(0, 20_000, 7):
        names.discard(f"entry-{i}")
    names.discard("never-added")
    assert names.index is not None and len(names) == 20_000 - len(range(0, 20_000, 7))
    for ids in (["a"], ["a", "b", "c"], [f"n{i}" for i in range(30)]):
        nodes = nodes_of(ids)
        assigned = strategy.assign(sorted(names), nodes)
        for me in (*ids, "absent"):
            found: list[str] = []
            job = names.owned(nodes, me, found)
            assert job is not None
            for _ in job:
                pass
            assert sorted(found) == sorted(n for n, owner in assigned.items() if owner == me)


def test_names_index_only_for_the_consistent_hash_ring() -> None:
    plain = Names(["a", "b"], strategy=get_strategy("rendezvous"))
    assert plain.index is None and plain.owned(nodes_of(["n"]), "n", []) is None
    assert plain == {"a", "b"}
