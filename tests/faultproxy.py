"""Fault-injecting TCP proxy for chaos and partition tests.

The proxy runs as its own OS process, so it keeps serving while a test process
is blocked and several executor processes can share it:

    python -m tests.faultproxy --listen 127.0.0.1:0 --upstream 127.0.0.1:3306 \\
        --control 127.0.0.1:0 --ports-file PATH

Modes, switched at runtime over HTTP on the control port:

- ``pass``: forward both ways.
- ``refuse``: new connections are closed at once; live ones keep flowing.
- ``drop``: close every live connection, both sides, then back to ``pass``.
- ``blackhole``: a partition. Live connections are read and discarded in both
  directions, their sockets stay open, so peers see silence, never an error.
  New connections are accepted and held unanswered; if the partition heals
  before the client gives up, they go through.

Control: ``POST /mode/<name>`` -> ``{"mode": ...}`` (the mode now in force);
``GET /stats`` -> ``{"mode", "active", "accepted", "refused", "dropped"}``.

``FaultProxy`` at the bottom is the client the tests use. It needs only the
standard library, and works whether or not the caller is monkey-patched.
"""

if __name__ == "__main__":
    # The proxy process is pure gevent: patch before anything imports socket,
    # ssl or threading. A process that merely imports the client is left as it
    # is, patched or not.
    from gevent import monkey

    monkey.patch_all()

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

import gevent
from gevent import socket as gsocket
from gevent.event import Event
from gevent.pywsgi import WSGIServer
from gevent.server import StreamServer

MODES = ("pass", "refuse", "drop", "blackhole")
BUFFER_SIZE = 65536
UPSTREAM_CONNECT_TIMEOUT = 5.0
PARENT_POLL_INTERVAL = 1.0

REPO_ROOT = Path(__file__).resolve().parent.parent
START_DEADLINE = 10.0
CONTROL_TIMEOUT = 5.0
STOP_TIMEOUT = 5.0


# --------------------------------------------------------------------------
# Proxy process
# --------------------------------------------------------------------------


def close_quietly(sock) -> None:
    """Close a socket that the peer or another greenlet may have closed."""
    # shutdown sends the FIN now, even if another reference keeps the fd open.
    with contextlib.suppress(OSError):
        sock.shutdown(gsocket.SHUT_RDWR)
    sock.close()


class Link:
    """One client connection and, once connected, its upstream socket."""

    def __init__(self, client) -> None:
        self.client = client
        self.upstream = None
        # The greenlet StreamServer runs handle() in: killing it ends the link.
        self.handler = gevent.getcurrent()
        self.pumps: list = []

    def close(self) -> None:
        # Idempotent: drop and the handler's own clean-up may both call it.
        gevent.killall(self.pumps, block=False)
        for sock in (self.client, self.upstream):
            if sock is not None:
                close_quietly(sock)


class Proxy:
    """Mode, counters and live links; every method runs in the one gevent hub."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.mode = "pass"
        self.links: set[Link] = set()
        self.accepted = 0
        self.refused = 0
        self.dropped = 0
        # Set whenever the mode is not blackhole; new links wait on it.
        self.healed = Event()
        self.healed.set()

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
        if mode == "drop":
            # A one-shot: cut everything now, then carry on as pass.
            self.drop_all()
            mode = "pass"
        self.mode = mode
        if mode == "blackhole":
            self.healed.clear()
        else:
            self.healed.set()

    def drop_all(self) -> None:
        links, self.links = self.links, set()
        for link in links:
            link.handler.kill(block=False)
            link.close()
        self.dropped += len(links)

    def stats(self) -> dict:
        return {
            "mode": self.mode,
            "active": len(self.links),
            "accepted": self.accepted,
            "refused": self.refused,
            "dropped": self.dropped,
        }

    def handle(self, client, _address) -> None:
        """StreamServer handler: one greenlet per accepted client connection."""
        self.accepted += 1
        if self.mode == "refuse":
            self.refuse(client)
            return
        link = Link(client)
        self.links.add(link)
        try:
            if self.connect_when_healed(link):
                self.forward(link)
        except OSError as exc:
            log(f"link to {self.upstream[0]}:{self.upstream[1]} failed: {exc}")
        finally:
            self.links.discard(link)
            link.close()

    def refuse(self, client) -> None:
        self.refused += 1
        close_quietly(client)

    def connect_when_healed(self, link: Link) -> bool:
        # A partition holds new connections in silence rather than failing them.
        self.healed.wait()
        if self.mode == "refuse":
            self.refused += 1
            return False
        link.upstream = gsocket.create_connection(self.upstream, UPSTREAM_CONNECT_TIMEOUT)
        link.upstream.settimeout(None)
        return True

    def forward(self, link: Link) -> None:
        link.pumps = [
            gevent.spawn(self.pump, link.client, link.upstream),
            gevent.spawn(self.pump, link.upstream, link.client),
        ]
        # Either side closing ends the link; the caller closes both sockets.
        gevent.wait(link.pumps, count=1)

    def pump(self, src, dst) -> None:
        """Copy src to dst until EOF; during a blackhole, read and discard."""
        try:
            while data := src.recv(BUFFER_SIZE):
                if self.mode != "blackhole":
                    dst.sendall(data)
        except OSError:
            pass  # a reset or a socket closed by drop: the link is over either way

    def control_app(self, environ, start_response):
        """WSGI app for the control port."""
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        if method == "GET" and path == "/stats":
            return json_reply(start_response, 200, self.stats())
        if method == "POST" and path.startswith("/mode/"):
            return self.mode_request(start_response, path[len("/mode/") :])
        return json_reply(start_response, 404, {"error": f"no route {method} {path}"})

    def mode_request(self, start_response, mode: str):
        try:
            self.set_mode(mode)
        except ValueError as exc:
            return json_reply(start_response, 400, {"error": str(exc)})
        return json_reply(start_response, 200, {"mode": self.mode})


def json_reply(start_response, status: int, body: dict) -> list[bytes]:
    data = json.dumps(body).encode()
    reason = http.client.responses.get(status, "")
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    start_response(f"{status} {reason}", headers)
    return [data]


def log(message: str) -> None:
    print(f"faultproxy[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.faultproxy", description=__doc__.split("\n")[0])
    address = {"type": parse_address, "metavar": "HOST:PORT"}
    parser.add_argument(
        "--listen",
        default=("127.0.0.1", 0),
        help="proxy port (0: any free one)",
        **address,
    )
    parser.add_argument("--upstream", default=("127.0.0.1", 3306), help="where to forward", **address)
    parser.add_argument("--control", default=("127.0.0.1", 0), help="HTTP control port", **address)
    parser.add_argument(
        "--ports-file",
        metavar="PATH",
        help="JSON file for the bound ports (default: stdout)",
    )
    return parser.parse_args(argv)


def publish_ports(path: str | None, ports: dict) -> None:
    if path is None:
        print(json.dumps(ports), flush=True)
        return
    # Write then rename, so a polling client never reads half a file.
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(ports, f)
    os.replace(tmp, path)


def stop_when_orphaned(parent_pid: int, stop: Event) -> None:
    # CI must never leak proxies. When the parent dies we are re-parented
    # (to init or a subreaper), so getppid() changes.
    while os.getppid() == parent_pid:
        gevent.sleep(PARENT_POLL_INTERVAL)
    log(f"parent {parent_pid} is gone, exiting")
    stop.set()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    proxy = Proxy(args.upstream)
    listener = StreamServer(args.listen, proxy.handle)
    control = WSGIServer(args.control, proxy.control_app, log=None)
    listener.start()
    control.start()
    publish_ports(
        args.ports_file,
        {"listen_port": listener.server_port, "control_port": control.server_port},
    )

    stop = Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stop.set)
    gevent.spawn(stop_when_orphaned, os.getppid(), stop)
    stop.wait()

    listener.close()
    control.close()
    proxy.drop_all()
    return 0


# --------------------------------------------------------------------------
# Client: standard library only, patched or not
# --------------------------------------------------------------------------


class FaultProxy:
    """Starts a proxy process and commands it.

    ``with FaultProxy().start() as proxy:`` then connect to
    ``127.0.0.1:proxy.port`` and call ``proxy.set_mode("blackhole")`` etc.
    """

    def __init__(self, upstream: tuple[str, int] = ("127.0.0.1", 3306)) -> None:
        self.upstream = upstream
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.control_port: int | None = None
        self._process: subprocess.Popen | None = None
        self._workdir: str | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> Self:
        if self._process is not None:
            raise RuntimeError("FaultProxy already started")
        self._workdir = tempfile.mkdtemp(prefix="faultproxy-")
        ports_file = os.path.join(self._workdir, "ports.json")
        # cwd=REPO_ROOT so that `-m tests.faultproxy` resolves to this file.
        self._process = subprocess.Popen(self._command(ports_file), cwd=REPO_ROOT)
        try:
            ports = self._wait_for_ports(ports_file)
        except BaseException:
            self.stop()
            raise
        self.port = ports["listen_port"]
        self.control_port = ports["control_port"]
        return self

    def _command(self, ports_file: str) -> list[str]:
        upstream_host, upstream_port = self.upstream
        return [
            sys.executable, "-m", "tests.faultproxy",
            "--listen", f"{self.host}:0",
            "--upstream", f"{upstream_host}:{upstream_port}",
            "--control", f"{self.host}:0",
            "--ports-file", ports_file,
        ]  # fmt: skip

    def _wait_for_ports(self, ports_file: str) -> dict:
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            if os.path.exists(ports_file):
                with open(ports_file) as f:
                    return json.load(f)
            if self._process.poll() is not None:
                raise RuntimeError(f"faultproxy exited ({self._process.returncode}) before listening")
            time.sleep(0.02)
        raise TimeoutError(f"faultproxy did not publish its ports within {START_DEADLINE:g} s")

    def set_mode(self, mode: str) -> None:
        """pass | refuse | drop | blackhole; in force when this returns."""
        self._request("POST", f"/mode/{mode}")

    def stats(self) -> dict:
        return self._request("GET", "/stats")

    def _request(self, method: str, path: str) -> dict:
        if self.control_port is None:
            raise RuntimeError("FaultProxy not started")
        # http.client rather than urllib: no *_proxy environment variables apply.
        conn = http.client.HTTPConnection(self.host, self.control_port, timeout=CONTROL_TIMEOUT)
        try:
            conn.request(method, path)
            response = conn.getresponse()
            body = json.loads(response.read() or b"{}")
        finally:
            conn.close()
        if response.status == 400:
            raise ValueError(body.get("error", "bad request"))
        if response.status != 200:
            raise RuntimeError(f"faultproxy {method} {path}: {response.status} {body}")
        return body

    def stop(self) -> None:
        """Terminate the proxy process; calling it again does nothing."""
        process, self._process = self._process, None
        if process is not None:
            terminate(process)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        self.port = self.control_port = None

    def __enter__(self) -> Self:
        return self if self._process is not None else self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def terminate(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


if __name__ == "__main__":
    sys.exit(main())
