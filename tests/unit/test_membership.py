"""Membership rules that need no registry."""

from __future__ import annotations

from celery_dcron.entries import Node, NodeStatus
from celery_dcron.membership import janitor_id


def test_the_janitor_is_the_working_node_with_the_lowest_id() -> None:
    nodes = [
        Node(id="b", status=NodeStatus.WORKING),
        Node(id="a", status=NodeStatus.STARTING),
        Node(id="c", status=NodeStatus.WORKING),
        Node(id="0", status=NodeStatus.LEAVING),
    ]
    assert janitor_id(nodes) == "b"
    assert janitor_id(nodes[1:2]) is None
    assert janitor_id([]) is None
