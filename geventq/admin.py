"""The admin HTTP API (Bottle), served from the executor process.

Every response is the JSON envelope {"code", "message", "data"}."""

from __future__ import annotations

import time
from typing import Any

import bottle
import ujson

from geventq import store
from geventq.errors import DatabaseError
from geventq.runtime import Runtime


def envelope(data: Any = None, *, code: int = 0, message: str = "success") -> str:
    return ujson.dumps({"code": code, "message": message, "data": data}, ensure_ascii=False)


def error_response(status: int, message: str) -> str:
    bottle.response.status = status
    bottle.response.content_type = "application/json"
    return envelope(None, code=status, message=message)


def create_app(runtime: Runtime) -> bottle.Bottle:
    app = bottle.Bottle()

    @app.get("/healthz")
    def healthz():
        bottle.response.content_type = "application/json"
        started = time.monotonic()
        try:
            runtime.db.call(store.database_now)
        except DatabaseError as error:
            return error_response(503, f"database unavailable: {error}")
        rtt_ms = round((time.monotonic() - started) * 1000, 2)
        return envelope({"server_id": runtime.server_id, "db_rtt_ms": rtt_ms})

    for status in (404, 405, 500):
        app.error(status)(lambda error, status=status:
                          error_response(status, error.body or bottle.HTTP_CODES[status]))
    return app
