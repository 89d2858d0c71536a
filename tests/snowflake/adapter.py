"""freshet's adapter in front of the fakesnow Snowflake emulator.

fakesnow speaks Snowflake's HTTP protocol, but three of its answers are ones
`snowflake-connector-rs` cannot read (EXTERNAL.md §3). This adapter runs
fakesnow's own ASGI app in-process and fixes exactly those, so the real client
code path runs unchanged against it:

1. results come back as Arrow (`rowsetBase64`); the client reads JSON rowsets
   only, so they are converted to Snowflake's JSON rowset (every cell a string,
   timestamps as `"<epoch seconds>.<fraction>"`, dates as days since the epoch);
   an answer of more than `--chunk-rows` rows is served like Snowflake serves a
   large result: the first part inline, the rest as gzip'd chunks (`chunks[]`)
   downloaded from this server;
2. error answers lack `data.queryId`, so the client hides the SQL error: one is
   added (fakesnow's unhandled errors, HTTP 500, become ordinary SQL errors);
3. login fails when the request has no `SESSION_PARAMETERS`: an empty set is
   filled in.

With `--db-dir`, every session shares one DuckDB database per Snowflake
database, kept as files in that folder, so data survives killing and
restarting the emulator. `GET /freshet-adapter/stats` answers the SQL texts
received so far, the logins and how many chunks were served (tests count
query kinds and check the multi-chunk path with it).
`POST /freshet-adapter/expire-sessions` makes every current session answer
as an expired Snowflake session does (code 390112) from then on.

The process exits when its stdin closes, so a test that dies never leaves an
emulator behind. It prints `listening on PORT` once it accepts connections.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import importlib
import json
import logging
import os
import socket
import sys
import threading
import uuid
import warnings
from collections import OrderedDict
from datetime import date
from decimal import Decimal
from typing import Any

import pyarrow as pa
import uvicorn
from fakesnow.instance import FakeSnow

# `fakesnow.server` the function shadows `fakesnow.server` the module.
fakesnow_server = importlib.import_module("fakesnow.server")

# Chunks not fetched are dropped oldest first past this many.
MAX_KEPT_CHUNKS = 512
EPOCH_DATE = date(1970, 1, 1)


class Adapter:
    """ASGI app: fakesnow's app, with its answers made readable."""

    def __init__(self, chunk_rows: int) -> None:
        self.inner = fakesnow_server.app
        self.chunk_rows = chunk_rows
        self.chunks: OrderedDict[str, bytes] = OrderedDict()
        self.queries: list[str] = []
        self.chunks_served = 0
        self.logins = 0
        self.expired: set[str] = set()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        path = scope["path"]
        if path.startswith("/freshet-adapter/chunks/"):
            await self.serve_chunk(path.rsplit("/", 1)[1], send)
        elif path == "/freshet-adapter/stats":
            stats = {"queries": self.queries, "chunks_served": self.chunks_served, "logins": self.logins}
            await respond(send, 200, json.dumps(stats).encode(), "application/json")
        elif path == "/freshet-adapter/expire-sessions":
            self.expired.update(fakesnow_server.sessions)
            await respond(send, 200, b"{}", "application/json")
        elif path == "/session/v1/login-request":
            self.logins += 1
            body = with_session_parameters(await read_body(receive))
            status, headers, answer = await self.call_inner(scope, body)
            await respond(send, status, answer, "application/json")
        elif path == "/queries/v1/query-request" and session_token(scope) in self.expired:
            expired = {"data": None, "code": "390112", "message": "Your session has expired. Please login again.", "success": False}
            await respond(send, 200, json.dumps(expired).encode(), "application/json")
        elif path == "/queries/v1/query-request":
            body = await read_body(receive)
            self.queries.append(json.loads(body).get("sqlText", ""))
            status, _, answer = await self.call_inner(scope, body)
            status, answer = self.fix_query_answer(status, answer, base_url(scope))
            await respond(send, status, answer, "application/json")
        else:
            await self.inner(scope, receive, send)

    async def call_inner(self, scope: dict, body: bytes) -> tuple[int, list, bytes]:
        """Runs fakesnow's app on a (rewritten) plain request body."""
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in (b"content-encoding", b"content-length")]
        headers.append((b"content-length", str(len(body)).encode()))
        inner_scope = dict(scope, headers=headers)
        sent = False

        async def inner_receive() -> dict:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        status, out_headers, chunks = 500, [], []

        async def inner_send(message: dict) -> None:
            nonlocal status, out_headers
            if message["type"] == "http.response.start":
                status, out_headers = message["status"], message.get("headers", [])
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.inner(inner_scope, inner_receive, inner_send)
        return status, out_headers, b"".join(chunks)

    def fix_query_answer(self, status: int, answer: bytes, base: str) -> tuple[int, bytes]:
        doc = json.loads(answer)
        if not doc.get("success"):
            # Snowflake answers a failed statement with 200, an error code and
            # a query id; fakesnow's unhandled errors are 500s without one.
            data = doc.get("data") or {}
            data.setdefault("queryId", str(uuid.uuid4()))
            data.setdefault("errorCode", doc.get("code") or "002003")
            doc["data"] = data
            doc.setdefault("code", data["errorCode"])
            return 200, json.dumps(doc).encode()
        data = doc["data"]
        if data.get("queryResultFormat") == "arrow":
            rows = arrow_to_json_rows(data.pop("rowsetBase64", ""), data.get("rowtype") or [])
            data["queryResultFormat"] = "json"
            data["rowset"] = self.split_into_chunks(rows, data, base)
            data["returned"] = len(data["rowset"])
        return status, json.dumps(doc).encode()

    def split_into_chunks(self, rows: list[list[str | None]], data: dict, base: str) -> list:
        """Keeps the first `chunk_rows` inline and serves the rest as chunks."""
        if len(rows) <= self.chunk_rows:
            return rows
        chunks = []
        for start in range(self.chunk_rows, len(rows), self.chunk_rows):
            part = rows[start : start + self.chunk_rows]
            # A chunk is the rows without the enclosing brackets.
            raw = json.dumps(part)[1:-1].encode()
            packed = gzip.compress(raw, compresslevel=1)
            chunk_id = uuid.uuid4().hex
            self.chunks[chunk_id] = packed
            while len(self.chunks) > MAX_KEPT_CHUNKS:
                self.chunks.popitem(last=False)
            chunks.append(
                {
                    "url": f"{base}/freshet-adapter/chunks/{chunk_id}",
                    "rowCount": len(part),
                    "uncompressedSize": len(raw),
                    "compressedSize": len(packed),
                }
            )
        data["chunks"] = chunks
        data["chunkHeaders"] = {}
        return rows[: self.chunk_rows]

    async def serve_chunk(self, chunk_id: str, send: Any) -> None:
        body = self.chunks.get(chunk_id)
        if body is None:
            await respond(send, 404, b"no such chunk", "text/plain")
        else:
            self.chunks_served += 1
            await respond(send, 200, body, "application/octet-stream")


def session_token(scope: dict) -> str:
    """The token of `Authorization: Snowflake Token="..."`."""
    for name, value in scope["headers"]:
        if name.lower() == b"authorization":
            return value.decode().partition('Token="')[2].rstrip('"')
    return ""


def with_session_parameters(body: bytes) -> bytes:
    if body[:2] == b"\x1f\x8b":
        body = gzip.decompress(body)
    doc = json.loads(body)
    doc.setdefault("data", {}).setdefault("SESSION_PARAMETERS", {})
    return json.dumps(doc).encode()


def arrow_to_json_rows(b64: str, rowtype: list[dict]) -> list[list[str | None]]:
    """Arrow IPC stream → Snowflake JSON rowset (rows of strings or nulls)."""
    if not b64:
        return []
    table = pa.ipc.open_stream(base64.b64decode(b64)).read_all()
    columns = [
        [to_json_cell(v, info) for v in column.to_pylist()]
        for column, info in zip(table.columns, rowtype, strict=True)
    ]
    return [list(row) for row in zip(*columns)]


def to_json_cell(value: Any, info: dict) -> str | None:
    """One cell as Snowflake's JSON rowset writes it, by its rowtype."""
    if value is None:
        return None
    kind = info["type"].lower()
    scale = info.get("scale") or 0
    if kind.startswith("timestamp"):
        # fakesnow's struct: whole seconds (floored), nanoseconds, zone index;
        # an aggregate over no rows comes back as a struct of nulls.
        if value["epoch"] is None:
            return None
        nanos = value["epoch"] * 1_000_000_000 + value["fraction"]
        text = epoch_text(nanos, scale)
        return f"{text} {value['timezone']}" if kind == "timestamp_tz" else text
    if kind == "time":
        return epoch_text(value, scale)
    if kind == "date":
        return str((value - EPOCH_DATE).days)
    if kind == "fixed":
        if scale:
            return format(Decimal(value), f".{scale}f")
        return str(int(value))
    if kind == "boolean":
        return "1" if value else "0"
    if kind == "binary":
        return bytes(value).hex().upper()
    if kind == "real":
        return repr(float(value))
    return str(value)


def epoch_text(nanos: int, scale: int) -> str:
    sign = "-" if nanos < 0 else ""
    seconds, fraction = divmod(abs(nanos), 1_000_000_000)
    if scale == 0:
        return f"{sign}{seconds}"
    return f"{sign}{seconds}.{fraction:09d}"[: len(sign) + len(str(seconds)) + 1 + scale]


def base_url(scope: dict) -> str:
    host, port = scope["server"]
    return f"http://{host}:{port}"


async def read_body(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if body[:2] == b"\x1f\x8b":
        body = gzip.decompress(body)
    return body


async def respond(send: Any, status: int, body: bytes, content_type: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def exit_when_stdin_closes() -> None:
    sys.stdin.buffer.read()
    os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--db-dir", help="keep databases as files here (survives restarts)")
    parser.add_argument("--chunk-rows", type=int, default=10_000, help="rows per result chunk")
    args = parser.parse_args()
    # Quiet: fakesnow logs every login, DuckDB warns about Arrow copies.
    logging.getLogger("fakesnow.server").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)
    if args.db_dir:
        os.makedirs(args.db_dir, exist_ok=True)
        fakesnow_server.shared_fs = FakeSnow(db_path=args.db_dir)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(128)
    threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
    print(f"listening on {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(Adapter(args.chunk_rows), log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
