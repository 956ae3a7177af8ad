"""Counting the statements one process sends, whatever else the server is
doing: a TCP proxy between that process and MySQL that reads the client's
side of the protocol and counts each command packet.

SHOW GLOBAL STATUS counts every client of the server; on a machine where
anything else talks to the same server (a test suite, another bench) its
deltas are polluted. The proxy sees only the connections made through it.

MySQL packets are a 3-byte length, a 1-byte sequence id and the payload. A
packet with sequence id 0 from the client starts a command; its first byte is
the command (0x03 COM_QUERY, followed by the statement text). The handshake
response has sequence id 1, so it is never mistaken for a command. TLS or
compression would hide the commands: the bench's server has neither, and the
executor asks for neither.
"""

from __future__ import annotations

import re
import socket
import threading
from collections import Counter

COM_QUERY = 0x03
COMMANDS = {
    0x01: "COM_QUIT",
    0x02: "COM_INIT_DB",
    0x0E: "COM_PING",
    0x16: "COM_STMT_PREPARE",
    0x17: "COM_STMT_EXECUTE",
    0x1F: "COM_RESET_CONNECTION",
}
# The verbs that map to the Com_ counters of SHOW GLOBAL STATUS.
VERB_COUNTER = {
    "SELECT": "Com_select",
    "UPDATE": "Com_update",
    "INSERT": "Com_insert",
    "DELETE": "Com_delete",
    "BEGIN": "Com_begin",
    "START": "Com_begin",
    "COMMIT": "Com_commit",
    "ROLLBACK": "Com_rollback",
    "SET": "Com_set_option",
    "SHOW": "Com_show",
}
_FIRST_WORD = re.compile(rb"^\s*(?:/\*.*?\*/\s*)*\(?\s*([A-Za-z]+)", re.S)


class CountingProxy:
    """Listens on 127.0.0.1:<port> (any free port) and forwards to `target`."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.counts: Counter[str] = Counter()
        self.connections = 0
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept_loop, daemon=True, name="sqlcount-accept").start()

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()
            self.connections = 0

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {**self.counts, "Connections": self.connections}

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=10)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self.connections += 1
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._client_to_server, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _close(source, sink)

    def _client_to_server(self, client: socket.socket, server: socket.socket) -> None:
        buffer = b""
        try:
            while data := client.recv(65536):
                server.sendall(data)
                buffer = self._count_packets(buffer + data)
        except OSError:
            pass
        finally:
            _close(client, server)

    def _count_packets(self, buffer: bytes) -> bytes:
        """Count the complete packets at the front of `buffer`; the rest is kept."""
        while len(buffer) >= 4:
            length = buffer[0] | buffer[1] << 8 | buffer[2] << 16
            if len(buffer) < 4 + length:
                break
            sequence, payload = buffer[3], buffer[4 : 4 + length]
            buffer = buffer[4 + length :]
            if sequence == 0 and payload:
                self._count_command(payload)
        return buffer

    def _count_command(self, payload: bytes) -> None:
        if payload[0] == COM_QUERY:
            match = _FIRST_WORD.match(payload[1:200])
            verb = match.group(1).decode().upper() if match else "?"
            name = VERB_COUNTER.get(verb, f"other:{verb}")
        else:
            name = COMMANDS.get(payload[0], f"command:{payload[0]:#04x}")
        with self._lock:
            self.counts[name] += 1
            if payload[0] == COM_QUERY:
                self.counts["Questions"] += 1


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
