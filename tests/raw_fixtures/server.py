"""A local HTTP server on 127.0.0.1 for download tests: serves files, honours Range, can misbehave on request.

``serve(files)`` runs a threaded server for the duration of a ``with`` block and yields a
:class:`LocalServer` (``url(name)``, ``requests``: the log of (path, Range header)). ``files`` maps a
path (no leading slash) to bytes or to a file path. Behaviours per path (``server.behaviour[path]``):

- ``"truncate"``: announce the full Content-Length but send only the first half, then close;
- ``"ignore_range"``: answer every request with the whole file (200), as some servers do;
- ``"gdrive"``: Google Drive's large-file flow: without ``confirm`` in the query, answer with the HTML
  "can't scan this file for viruses" page whose form leads to ``/download?id=...&confirm=t&uuid=...``;
- ``"gdrive_loop"``: as ``"gdrive"``, but the form's target answers with the warning page again (quota);
- ``"gdrive_cookie"``: the older flow: a ``download_warning_*`` cookie and a page without a form;
- ``"no_length"`` / ``"no_length_truncate"``: no Content-Length (the body ends when the connection closes),
  the whole file or its first half;
- ``"chunked"``: chunked transfer encoding (HTTP/1.1), the whole file;
- ``"trickle"``: the file one byte every 20 ms (each read well inside any per-read timeout).
"""

from __future__ import annotations

import contextlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, urlparse

DRIVE_PAGE = """<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>
<p>Google Drive can't scan this file for viruses.</p>
<form id="download-form" action="/download" method="get">
<input type="submit" id="uc-download-link" value="Download anyway"/>
<input type="hidden" name="id" value="{id}"><input type="hidden" name="export" value="download">
<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="0e3c5f1a"></form></body></html>"""


class LocalServer:
    def __init__(self, files: dict[str, bytes | Path]) -> None:
        self.files = {k: (v if isinstance(v, bytes) else Path(v).read_bytes()) for k, v in files.items()}
        self.behaviour: dict[str, str] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.port = 0

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                parsed = urlparse(self.path)
                query = parse_qs(parsed.query)
                name = parsed.path.lstrip("/")
                server.requests.append((self.path, self.headers.get("Range")))
                if name == "download":  # the Drive confirm form's target
                    name = query.get("id", [""])[0]
                    if query.get("confirm") != ["t"]:
                        return self.send_error(403)
                    if server.behaviour.get(name) == "gdrive_loop":
                        return self._send_html(DRIVE_PAGE.format(id=name))
                    return self._send_file(name, ignore_range=False)
                behaviour = server.behaviour.get(name)
                if name not in server.files:
                    return self.send_error(404)
                if behaviour in ("gdrive", "gdrive_loop") and "confirm" not in query:
                    return self._send_html(DRIVE_PAGE.format(id=name))
                if behaviour == "gdrive_cookie":
                    if query.get("confirm") != ["XyZ12"] or "download_warning_1_abc=XyZ12" not in (self.headers.get("Cookie") or ""):
                        return self._send_html("<html><body>Virus scan warning</body></html>",
                                               cookie="download_warning_1_abc=XyZ12; Path=/")
                if behaviour in ("no_length", "no_length_truncate", "chunked", "trickle"):
                    return self._send_special(name, behaviour)
                self._send_file(name, ignore_range=behaviour == "ignore_range", truncate=behaviour == "truncate")

            def _send_special(self, name, behaviour):
                data = server.files[name]
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                if behaviour == "chunked":
                    self.send_header("Transfer-Encoding", "chunked")
                elif behaviour == "trickle":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.close_connection = True
                try:
                    if behaviour == "chunked":
                        for i in range(0, len(data), 50_000):
                            piece = data[i : i + 50_000]
                            self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                        self.wfile.write(b"0\r\n\r\n")
                    elif behaviour == "trickle":
                        for i in range(len(data)):
                            self.wfile.write(data[i : i + 1])
                            self.wfile.flush()
                            time.sleep(0.02)
                    else:
                        self.wfile.write(data[: len(data) // 2] if behaviour == "no_length_truncate" else data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a deadline)
                    pass

            def _send_html(self, page, cookie=None):
                body = page.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                if cookie:
                    self.send_header("Set-Cookie", cookie)
                self.end_headers()
                self.wfile.write(body)

            def _send_file(self, name, ignore_range, truncate=False):
                data = server.files[name]
                start = 0
                ranged = self.headers.get("Range")
                if ranged and not ignore_range:
                    start = int(ranged.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if truncate else body)
                if truncate:
                    self.close_connection = True

        return Handler


@contextlib.contextmanager
def serve(files: dict[str, bytes | Path]) -> Iterator[LocalServer]:
    server = LocalServer(files)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), server.handler())
    server.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
