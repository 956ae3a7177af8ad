"""Choosing the database node (`database.hosts`): the node in use while it
answers, the next one in turn when it does not (README, "Running on a Galera
cluster"). No database here: a connection is whatever `open` returns."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from geventq.db import Nodes
from geventq.errors import DatabaseUnavailable

A, B, C = ("a", 1), ("b", 2), ("c", 3)


def opener(dead: set[tuple[str, int]], tried: list[tuple[str, int]]):
    def open_one(host: str, port: int):
        tried.append((host, port))
        if (host, port) in dead:
            raise DatabaseUnavailable(f"(2003) cannot connect to {host}:{port}")
        return SimpleNamespace(host=host, port=port)

    return open_one


def test_the_first_node_is_preferred():
    nodes, tried = Nodes([A, B, C]), []
    assert (nodes.open(opener(set(), tried)).host, nodes.current) == ("a", "a:1")
    assert tried == [A]


def test_a_dead_node_is_passed_over_and_the_next_one_kept():
    nodes, tried = Nodes([A, B, C]), []
    nodes.open(opener({A}, tried))
    nodes.open(opener({A}, tried))
    assert tried == [A, B, B]
    assert nodes.current == "b:2"


def test_round_robin_wraps_around_to_the_first_node():
    nodes, tried = Nodes([A, B, C]), []
    nodes.open(opener({A, B}, tried))
    assert nodes.current == "c:3"
    nodes.broken(SimpleNamespace(host="c", port=3))
    assert nodes.open(opener({B}, tried)).host == "a"
    assert nodes.current == "a:1"


def test_a_connection_broken_on_another_node_moves_nothing():
    nodes = Nodes([A, B])
    nodes.broken(SimpleNamespace(host="b", port=2))
    assert nodes.current == "a:1"
    nodes.broken(SimpleNamespace(host="a", port=1))
    assert nodes.current == "b:2"


def test_every_node_dead_raises_the_last_reason():
    nodes, tried = Nodes([A, B]), []
    with pytest.raises(DatabaseUnavailable, match="b:2"):
        nodes.open(opener({A, B}, tried))
    assert tried == [A, B]
    assert nodes.current == "a:1"


def test_ipv6_hosts_are_shown_in_brackets():
    assert Nodes([("::1", 3306)]).current == "[::1]:3306"
