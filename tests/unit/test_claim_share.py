"""Which share of the due rows a server claims first on a Galera cluster."""

from collections import Counter

from geventq.claims import SHARE_ROTATION, claim_share

SERVERS = ["s1", "s2", "s3"]


def test_live_servers_have_different_parts_at_any_moment():
    for turn in range(7):
        now = 1_700_000_000 + turn * SHARE_ROTATION + 0.3
        shares = [claim_share(server, SERVERS, now) for server in SERVERS]
        assert {parts for _, parts in shares} == {3}
        assert sorted(part for part, _ in shares) == [0, 1, 2]


def test_every_part_comes_to_every_server_within_one_round():
    # No starvation: a part whose server is gone moves on to a live one.
    for server in SERVERS:
        parts = {claim_share(server, SERVERS, 50.0 + turn * SHARE_ROTATION)[0] for turn in range(3)}
        assert parts == {0, 1, 2}


def test_the_part_stays_put_within_a_rotation():
    start = 10 * SHARE_ROTATION
    seen = {
        claim_share("s2", SERVERS, start + fraction * SHARE_ROTATION) for fraction in (0, 0.25, 0.5, 0.99)
    }
    assert len(seen) == 1


def test_a_server_missing_from_the_list_still_counts_itself():
    # Just started: the live list it read does not have it yet.
    part, parts = claim_share("s4", SERVERS, 0.0)
    assert parts == 4
    assert 0 <= part < 4
    others = {claim_share(server, [*SERVERS, "s4"], 0.0)[0] for server in SERVERS}
    assert part not in others


def test_alone_it_takes_everything():
    assert claim_share("only", [], 123.4) == (0, 1)
    assert claim_share("only", ["only"], 5.0) == (0, 1)


def test_the_order_of_the_list_does_not_matter():
    now = 77.7
    assert Counter(claim_share(s, SERVERS, now) for s in SERVERS) == Counter(
        claim_share(s, list(reversed(SERVERS)), now) for s in SERVERS
    )
