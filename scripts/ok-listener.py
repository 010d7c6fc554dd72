"""A stand-in listener for the measurement scripts: answers 200 to every POST and
writes the port it listens on (127.0.0.1, a free one) to the file named by argv[1].
    python3 scripts/ok-listener.py PORT_FILE &"""
import http.server
import socketserver
import sys


class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


s = socketserver.TCPServer(("127.0.0.1", 0), H)
open(sys.argv[1], "w").write(str(s.server_address[1]))
s.serve_forever()
