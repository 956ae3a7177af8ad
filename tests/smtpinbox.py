"""A real SMTP server for tests (aiosmtpd on a free local port) that keeps
what it receives."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.support import free_port


@dataclass
class Delivery:
    mail_from: str
    rcpt_tos: list[str]
    message: email.message.EmailMessage


@dataclass
class Inbox:
    """An aiosmtpd handler that keeps what it receives. RCPT to nobody@ gets a
    permanent 550, to busy@ a temporary 451."""

    deliveries: list[Delivery] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options) -> str:
        if address.startswith("nobody@"):
            return "550 5.1.1 no such user"
        if address.startswith("busy@"):
            return "451 4.2.1 mailbox busy, try later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.deliveries.append(Delivery(envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 2.0.0 Ok: queued as TEST123"

    def authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            self.logins.append((auth_data.login.decode(), auth_data.password.decode()))
            return AuthResult(success=True)
        return AuthResult(success=False, handled=False)


@contextmanager
def running_inbox() -> Iterator[tuple[Inbox, int]]:
    """(inbox, port) while the server runs."""
    inbox = Inbox()
    port = free_port()
    # AUTH without TLS: a local test server only, so login() can be exercised.
    controller = Controller(
        inbox, hostname="127.0.0.1", port=port, auth_require_tls=False, authenticator=inbox.authenticate
    )
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()
