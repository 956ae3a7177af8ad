"""Who this executor process is: fixed once start-up has bound the admin port,
and shared read-only by every part that needs to say so."""

from __future__ import annotations

from dataclasses import dataclass

from geventq.config import Config


@dataclass(frozen=True)
class Identity:
    server_id: str
    config: Config
    admin_address: str  # host:port where other servers reach our admin API
