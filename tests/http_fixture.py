"""A test HTTP server on 127.0.0.1 serving a folder, with switchable misbehaviour: Range support,
a connection cut halfway through a file, no Content-Length header, a slow or silent server, 404s,
416 for a range past the end. It records requests."""
from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        if srv.silent_s:
            time.sleep(srv.silent_s)
        path = srv.root / self.path.split("?")[0].lstrip("/")
        if not path.is_file():
            self.send_error(404, "Not Found")
            return
        data = path.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        if rng and srv.range_ok:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        if not srv.no_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path in srv.cut_once:
            srv.cut_once.discard(self.path)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)  # the connection dies halfway
            return
        for i in range(0, len(body), 4096):
            self.wfile.write(body[i:i + 4096])
            if srv.delay_s:
                time.sleep(srv.delay_s)


class LocalServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), Handler)
        self.root = root
        self.requests: list[tuple[str, str | None]] = []
        self.range_ok = True
        self.no_length = False  # send no Content-Length: the client reads until the connection closes
        self.cut_once: set[str] = set()
        self.delay_s = 0.0
        self.silent_s = 0.0
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.shutdown()
        self.server_close()
