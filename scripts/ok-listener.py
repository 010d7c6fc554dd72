"""A stand-in listener for the measurement and package scripts: answers 200 to every
POST and writes the port it listens on (127.0.0.1, a free one) to the file named by
argv[1]. With argv[2], appends the id of every event it receives there, one per line.
    python3 scripts/ok-listener.py PORT_FILE [IDS_FILE] &"""
import gzip
import http.server
import json
import socketserver
import sys

IDS = sys.argv[2] if len(sys.argv) > 2 else None


class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if IDS:
            body = gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
            events = json.loads(body).get("events") or []
            with open(IDS, "a") as f:
                f.writelines(e["id"] + "\n" for e in events)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


s = socketserver.TCPServer(("127.0.0.1", 0), H)
open(sys.argv[1], "w").write(str(s.server_address[1]))
s.serve_forever()
