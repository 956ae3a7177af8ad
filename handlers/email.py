"""Sample handler "email": send one message through the configured SMTP server.

task_params:
    to        str or non-empty list of addresses (required; a str may hold
              several, comma-separated; "Name <addr>" is accepted)
    cc, bcc   optional, same shape as `to`; Bcc recipients get the message
              but no header names them
    subject   non-empty str (required)
    content   str (required): the message body, plain text, or HTML when
              type is "html" (the original system's name for it)
    body      accepted instead of `content`; giving both is an error
    type      "text" (default) or "html"
    reply_to  optional, same shape as `to`
    dry_run   optional bool: render the message into the job log, send nothing

Bad params fail the task at once (PermanentFailure naming the field). Network
and server trouble (connection refused, timeouts, 4xx replies) raise as they
are, so the queue retries the task with backoff.
"""

from __future__ import annotations

import re
import smtplib
import ssl
from dataclasses import dataclass
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, getaddresses, make_msgid, parseaddr
from html.parser import HTMLParser
from typing import Any

from geventq.config import SmtpConfig
from geventq.errors import PermanentFailure
from geventq.handlers import JobContext, task_handler
from geventq.params import json_type, require_object

KNOWN_PARAMS = ("to", "cc", "bcc", "subject", "content", "body", "type", "reply_to", "dry_run")
BODY_TYPES = ("text", "html")
# CR/LF in a header value would let task params inject headers (a Bcc, say).
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
DRY_RUN_LOG_LIMIT = 20_000


@dataclass(frozen=True)
class EmailRequest:
    to: list[Address]
    cc: list[Address]
    bcc: list[Address]
    reply_to: list[Address]
    subject: str
    body: str
    body_type: str
    dry_run: bool

    @property
    def envelope_recipients(self) -> list[str]:
        """Bare addresses for RCPT TO, each once, in to/cc/bcc order."""
        return list(dict.fromkeys(address.addr_spec for address in self.to + self.cc + self.bcc))


# --- params ---------------------------------------------------------------------


def parse_email_params(params: Any) -> EmailRequest:
    """Check task_params; raise PermanentFailure("<field>: <why>") on the first problem."""
    params = require_object(params, KNOWN_PARAMS)
    return EmailRequest(
        to=_addresses(params, "to", required=True),
        cc=_addresses(params, "cc"),
        bcc=_addresses(params, "bcc"),
        reply_to=_addresses(params, "reply_to"),
        subject=_subject(params.get("subject")),
        body=_body(params),
        body_type=_body_type(params.get("type", "text")),
        dry_run=_flag(params, "dry_run"),
    )


def _addresses(params: dict[str, Any], field: str, *, required: bool = False) -> list[Address]:
    """Addresses from a str (one, or several comma-separated) or a list of str."""
    value = params.get(field)
    if value is None or value == []:
        if required:
            raise PermanentFailure(f"{field}: required, a string or a non-empty list of e-mail addresses")
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise PermanentFailure(f"{field}: must be a string or a list of strings, got {json_type(value)}")
    for item in items:
        if not isinstance(item, str):
            raise PermanentFailure(f"{field}: every address must be a string, got {json_type(item)}")
    return [address for item in items for address in _parse_address_list(field, item)]


def _parse_address_list(field: str, text: str) -> list[Address]:
    if CONTROL_CHARACTERS.search(text):
        raise PermanentFailure(f"{field}: {text!r} contains control characters")
    pairs = getaddresses([text])
    if not pairs:
        raise PermanentFailure(f"{field}: {text!r} is not an e-mail address")
    return [_address(field, text, name, addr_spec) for name, addr_spec in pairs]


def _address(field: str, text: str, name: str, addr_spec: str) -> Address:
    # getaddresses() turns garbage into empty or partial addresses rather than
    # failing; Address() parses the addr-spec strictly (RFC 5322) and raises.
    try:
        if "@" not in addr_spec:
            raise ValueError("no @")
        return Address(display_name=name, addr_spec=addr_spec)
    except (ValueError, IndexError, HeaderParseError):
        raise PermanentFailure(f"{field}: {text!r} is not an e-mail address") from None


def _subject(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PermanentFailure("subject: required, a non-empty string")
    if CONTROL_CHARACTERS.search(value):
        raise PermanentFailure("subject: must be one line without control characters")
    return value


def _body(params: dict[str, Any]) -> str:
    """The seed's `content`, or its alias `body`: exactly one of them."""
    if "content" in params and "body" in params:
        raise PermanentFailure("content, body: give one of them (body is an alias of content), not both")
    field = "body" if "body" in params else "content"
    value = params.get(field)
    if not isinstance(value, str):
        raise PermanentFailure(f"{field}: required, a string, got {json_type(value)}")
    return value


def _body_type(value: Any) -> str:
    if value not in BODY_TYPES:
        raise PermanentFailure(f"type: must be one of {', '.join(BODY_TYPES)}, got {value!r}")
    return value


def _flag(params: dict[str, Any], field: str) -> bool:
    value = params.get(field, False)
    if not isinstance(value, bool):
        raise PermanentFailure(f"{field}: must be true or false, got {value!r}")
    return value


# --- the message ----------------------------------------------------------------


def build_message(request: EmailRequest, sender: str) -> EmailMessage:
    """The message as it will be sent. Bcc recipients travel only in the
    SMTP envelope: a Bcc header would show them to everyone."""
    message = EmailMessage()
    message["From"] = sender
    # Address objects, not strings: the policy encodes non-ASCII display names.
    message["To"] = request.to
    if request.cc:
        message["Cc"] = request.cc
    if request.reply_to:
        message["Reply-To"] = request.reply_to
    message["Subject"] = request.subject
    message["Date"] = formatdate(localtime=True)
    # An explicit domain: make_msgid() would otherwise ask DNS for our FQDN.
    message["Message-ID"] = make_msgid(domain=_domain_of(sender))
    _set_body(message, request)
    return message


def _set_body(message: EmailMessage, request: EmailRequest) -> None:
    if request.body_type == "text":
        message.set_content(request.body)
        return
    # multipart/alternative with a plain-text part first: clients that do not
    # render HTML (and spam filters that distrust HTML-only mail) get readable
    # text, HTML-capable clients pick the last part.
    message.set_content(html_to_text(request.body))
    message.add_alternative(request.body, subtype="html")


def _domain_of(sender: str) -> str:
    address = parseaddr(sender)[1]
    return address.rpartition("@")[2] or "localhost"


class _TextExtractor(HTMLParser):
    """Visible text of an HTML fragment, with line breaks at block elements."""

    BLOCKS = frozenset(
        {
            "p",
            "div",
            "br",
            "li",
            "tr",
            "table",
            "ul",
            "ol",
            "hr",
            "h1",
            "h2",
            "h3",
            "h4",
            "h5",
            "h6",
            "blockquote",
            "pre",
        }
    )
    INVISIBLE = frozenset({"script", "style", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden_depth = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self.INVISIBLE:
            self._hidden_depth += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.INVISIBLE:
            self._hidden_depth = max(0, self._hidden_depth - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden_depth:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    extractor = _TextExtractor()
    extractor.feed(html)
    extractor.close()
    lines = (line.strip() for line in "".join(extractor.parts).splitlines())
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


# --- sending --------------------------------------------------------------------


class _SMTP(smtplib.SMTP):
    """smtplib.SMTP that keeps the server's reply to DATA (it carries the
    server's queue id, which is what an operator greps the mail log for);
    sendmail() itself drops it."""

    data_reply: tuple[int, bytes] | None = None

    def data(self, msg: Any) -> tuple[int, bytes]:
        self.data_reply = super().data(msg)
        return self.data_reply


def deliver(message: EmailMessage, recipients: list[str], smtp: SmtpConfig) -> tuple[str, dict]:
    """Send; return the server's reply to DATA and the recipients it refused
    (when it accepted at least one)."""
    envelope_sender = parseaddr(smtp.sender)[1]
    if not envelope_sender:
        raise PermanentFailure(f"smtp.sender: {smtp.sender!r} holds no e-mail address")
    with _SMTP(smtp.host, smtp.port, timeout=smtp.timeout) as client:
        if smtp.starttls:
            client.starttls(context=ssl.create_default_context())
        if smtp.username:
            client.login(smtp.username, smtp.password)
        try:
            refused = client.send_message(message, from_addr=envelope_sender, to_addrs=recipients)
        except (smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError) as error:
            raise _permanent_if_rejected(error) from error
        return _format_reply(client.data_reply), refused


def _permanent_if_rejected(error: smtplib.SMTPException) -> Exception:
    """A 5xx reply is the server saying "never": retrying cannot help.
    4xx replies (mailbox busy, greylisting) stay retryable."""
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        replies = error.recipients
        if all(code >= 500 for code, _text in replies.values()):
            refused = "; ".join(f"{rcpt} ({_format_reply(reply)})" for rcpt, reply in replies.items())
            return PermanentFailure(f"recipients: the SMTP server refused every recipient: {refused}")
    elif isinstance(error, smtplib.SMTPDataError) and error.smtp_code >= 500:
        reply = _format_reply((error.smtp_code, error.smtp_error))
        return PermanentFailure(f"message: the SMTP server rejected it: {reply}")
    return error


def _format_reply(reply: tuple[int, bytes | str] | None) -> str:
    if reply is None:
        return "(no reply)"
    code, text = reply
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return f"{code} {text}"


# --- the handler ----------------------------------------------------------------


@task_handler("email")
def send_email(ctx: JobContext) -> dict[str, Any]:
    request = parse_email_params(ctx.params)
    message = build_message(request, sender=ctx.config.smtp.sender)
    recipients = request.envelope_recipients
    ctx.log.info(
        "e-mail {} to={} cc={} bcc={} subject={!r}",
        message["Message-ID"],
        _listed(request.to),
        _listed(request.cc),
        _listed(request.bcc),
        request.subject,
    )
    if request.dry_run:
        ctx.log.info("dry run, nothing sent; the message would be:\n{}", _preview(message))
        return {"sent": False, "recipients": len(recipients), "message_id": message["Message-ID"]}

    smtp = ctx.config.smtp
    ctx.log.info(
        "sending through {}:{} (starttls={}, login={})",
        smtp.host,
        smtp.port,
        smtp.starttls,
        bool(smtp.username),
    )
    reply, refused = deliver(message, recipients, smtp)
    if refused:
        ctx.log.warning(
            "the server refused some recipients: {}",
            {rcpt: _format_reply(answer) for rcpt, answer in refused.items()},
        )
    ctx.log.info(
        "accepted for {} of {} recipients: {}", len(recipients) - len(refused), len(recipients), reply
    )
    return {
        "sent": True,
        "recipients": len(recipients),
        "refused": sorted(refused),
        "message_id": message["Message-ID"],
        "reply": reply,
    }


def _listed(addresses: list[Address]) -> str:
    return ", ".join(map(str, addresses)) or "-"


def _preview(message: EmailMessage) -> str:
    text = message.as_string()
    if len(text) <= DRY_RUN_LOG_LIMIT:
        return text
    return f"{text[:DRY_RUN_LOG_LIMIT]}\n... ({len(text) - DRY_RUN_LOG_LIMIT} more characters)"
