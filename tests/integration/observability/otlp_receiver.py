"""A tiny OTLP/HTTP trace receiver for the tests, run in a process of its own.

``python otlp_receiver.py OUT`` listens on 127.0.0.1 (a free port, printed as the first line
of stdout), decodes each ``POST /v1/traces`` body as an ``ExportTraceServiceRequest``
(opentelemetry-proto, as a collector does) and appends one JSON line per span to OUT: ids in
hex, name, kind, times, status, attributes, events, links and the resource's attributes.
Only what the OTLP/HTTP specification asks of a receiver: protobuf bodies (gzip if the
exporter compresses), 200 with an ``ExportTraceServiceResponse``. Tests start it with
:func:`receiver`.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue


def value_of(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value_of(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return attributes_of(v.kvlist_value.values)
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind) if kind else None


def attributes_of(kvs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvs:
        assert isinstance(kv, KeyValue)
        out[kv.key] = value_of(kv.value)
    return out


def spans_of(request: ExportTraceServiceRequest) -> list[dict[str, Any]]:
    spans = []
    for rs in request.resource_spans:
        resource = attributes_of(rs.resource.attributes)
        for ss in rs.scope_spans:
            for sp in ss.spans:
                spans.append(
                    {
                        "trace_id": sp.trace_id.hex(),
                        "span_id": sp.span_id.hex(),
                        "parent_span_id": sp.parent_span_id.hex(),
                        "name": sp.name,
                        "kind": sp.kind,
                        "start": sp.start_time_unix_nano,
                        "end": sp.end_time_unix_nano,
                        "status": sp.status.code,
                        "attributes": attributes_of(sp.attributes),
                        "events": [
                            {"name": e.name, "attributes": attributes_of(e.attributes)}
                            for e in sp.events
                        ],
                        "links": [
                            {
                                "trace_id": ln.trace_id.hex(),
                                "span_id": ln.span_id.hex(),
                                "attributes": attributes_of(ln.attributes),
                            }
                            for ln in sp.links
                        ],
                        "resource": resource,
                        "scope": ss.scope.name,
                    }
                )
    return spans


class Receiver(BaseHTTPRequestHandler):
    out: Path
    lock = threading.Lock()

    def do_POST(self) -> None:
        if self.path != "/v1/traces":
            self.send_error(404)
            return
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        lines = "".join(json.dumps(s) + "\n" for s in spans_of(request))
        with self.lock, open(self.out, "a") as fh:
            fh.write(lines)
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: one line per export would drown the test's output."""


Span = dict[str, Any]


@dataclass
class Received:
    """A running receiver: its endpoint (for OTEL_EXPORTER_OTLP_ENDPOINT) and what it got."""

    endpoint: str
    out: Path

    def spans(self) -> list[Span]:
        text = self.out.read_text()
        return [json.loads(line) for line in text.split("\n")[:-1]]  # complete lines only

    def wait_for(self, cond: Callable[[list[Span]], bool], timeout: float = 120.0) -> list[Span]:
        """The spans once ``cond`` holds for them (exporters batch: they come in bursts)."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans()
            if cond(spans):
                return spans
            if time.monotonic() > deadline:
                names = sorted({s["name"] for s in spans})
                raise AssertionError(f"spans never satisfied the test; got {names}")
            time.sleep(0.3)


@contextmanager
def receiver(tmp: Path) -> Iterator[Received]:
    """Run the receiver in its own process for the block."""
    out = tmp / "spans.jsonl"
    proc = subprocess.Popen([sys.executable, __file__, str(out)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield Received(f"http://127.0.0.1:{port}", out)
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    Receiver.out = Path(sys.argv[1])
    Receiver.out.touch()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
