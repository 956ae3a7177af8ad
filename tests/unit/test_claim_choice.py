"""Which claim a server uses, chosen once at start-up by its version."""

import pytest

from geventq.admin_store import supports_insert_returning
from geventq.claims import use_skip_locked
from geventq.store import supports_skip_locked


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("10.11.19-MariaDB-0+deb12u1", True),
        ("10.6.0-MariaDB", True),
        ("10.5.23-MariaDB-log", False),
        ("8.0.1", True),
        ("8.0.0-dmr", False),
        ("5.7.44-log", False),
        ("garbage", False),
    ],
)
def test_skip_locked_by_version(version, expected):
    assert supports_skip_locked(version) is expected


def test_claim_mode_auto_follows_the_version_and_the_others_force():
    assert use_skip_locked("auto", "10.11.2-MariaDB") is True
    assert use_skip_locked("auto", "5.7.44") is False
    assert use_skip_locked("skip_locked", "5.7.44") is True
    assert use_skip_locked("conditional_update", "10.11.2-MariaDB") is False


@pytest.mark.parametrize(
    ("version", "expected"),
    [("10.5.0-MariaDB", True), ("10.4.30-MariaDB", False), ("8.0.36", False), ("nonsense", False)],
)
def test_insert_returning_only_on_mariadb_10_5_and_later(version, expected):
    assert supports_insert_returning(version) is expected
