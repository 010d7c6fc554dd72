"""An OTLP/HTTP logs receiver for the integration tests: decodes every request with the
official definitions (PyPI's opentelemetry-proto) and records what it saw, one JSON line
per request, in OUT. Answers as MODE_FILE says when the request arrives:
  ok              200 with an empty ExportLogsServiceResponse
  status:NNN      that status, empty body (a 3xx names a Location with credentials)
  reject-marked   400 when a record's body holds REJECT-ME, else 200
Prints "PORT <n>" once listening.  usage: otlp_receiver.py PORT OUT MODE_FILE
"""

import gzip
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.common.v1 import common_pb2

MARK = "REJECT-ME"


def value(v: common_pb2.AnyValue):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "kvlist_value":
        return {kv.key: value(kv.value) for kv in v.kvlist_value.values}
    if kind == "array_value":
        return [value(i) for i in v.array_value.values]
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind)


def attrs(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


def decode(body: bytes):
    req = logs_service_pb2.ExportLogsServiceRequest()
    req.ParseFromString(body)
    out = {"resource_logs": []}
    for rl in req.resource_logs:
        scopes = []
        for sl in rl.scope_logs:
            records = []
            for r in sl.log_records:
                records.append(
                    {
                        "time_unix_nano": r.time_unix_nano,
                        "observed_time_unix_nano": r.observed_time_unix_nano,
                        "severity_number": r.severity_number,
                        "severity_text": r.severity_text,
                        "event_name": r.event_name,
                        "trace_id": r.trace_id.hex(),
                        "span_id": r.span_id.hex(),
                        "flags": r.flags,
                        "attributes": attrs(r.attributes),
                        "body": value(r.body),
                    }
                )
            scopes.append(
                {"scope": MessageToDict(sl.scope), "records": records}
            )
        out["resource_logs"].append(
            {"resource": attrs(rl.resource.attributes), "scopes": scopes}
        )
    return out


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        seen = {
            "path": self.path,
            "authorization": self.headers.get("Authorization"),
            "x_scope": self.headers.get("X-Scope-OrgID"),
            "content_type": self.headers.get("Content-Type"),
            "encoding": self.headers.get("Content-Encoding"),
        }
        try:
            body = gzip.decompress(raw) if seen["encoding"] == "gzip" else raw
            seen["request"] = decode(body)
        except Exception as e:  # recorded, answered 400
            seen["error"] = repr(e)
        with open(self.server.mode_file) as f:
            mode = f.read().strip() or "ok"
        if "error" in seen:
            status = 400
        elif mode.startswith("status:"):
            status = int(mode.split(":", 1)[1])
        elif mode == "reject-marked" and MARK in json.dumps(seen["request"]):
            status = 400
        else:
            status = 200
        seen["status"] = status
        with open(self.server.out, "a") as f:
            f.write(json.dumps(seen) + "\n")
        answer = (
            logs_service_pb2.ExportLogsServiceResponse().SerializeToString()
            if status == 200
            else b""
        )
        self.send_response(status)
        if 300 <= status < 400:
            # Somewhere else, with credentials in it (never to be shown).
            self.send_header("Location", "http://user:hunter2@127.0.0.1:1/v1/logs")
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


def main():
    port, out, mode_file = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    HTTPServer.allow_reuse_address = True
    server = HTTPServer(("127.0.0.1", port), Handler)
    server.out = out
    server.mode_file = mode_file
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
