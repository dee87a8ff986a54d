"""The threaded wsgiref server that the Barbican and Glance test servers run in.

Imported by ``barbican_app/serve.py`` and ``glance_app/serve.py``, which run with
their own cached venv's Python (not the project's) and put this directory (it
holds nothing else, so it shadows no package) on ``sys.path``; so standard
library only.
"""

import os
import sys
import threading
import time
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class ChunkedInput:
    """A request body sent with ``Transfer-Encoding: chunked``, decoded (wsgiref hands the raw stream on).

    Glance's production servers (uWSGI, eventlet) decode chunked bodies, and glanceclient sends image
    data chunked (Nova's snapshot uploads): without this, such an upload would hang here.
    """

    def __init__(self, raw):
        self.raw = raw
        self.left = 0
        self.done = False

    def _next_chunk(self):
        line = self.raw.readline(65537)
        size = int(line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while self.raw.readline(65537) not in (b"\r\n", b"\n", b""):  # trailers
                pass
            self.done = True
        self.left = size

    def read(self, size=-1):
        out = bytearray()
        while not self.done and (size < 0 or len(out) < size):
            if self.left == 0:
                self._next_chunk()
                continue
            want = self.left if size < 0 else min(self.left, size - len(out))
            data = self.raw.read(want)
            if not data:
                raise ConnectionError("the chunked request body ended early")
            out += data
            self.left -= len(data)
            if self.left == 0:
                self.raw.readline(3)  # the CRLF after each chunk
        return bytes(out)

    def readline(self, size=-1):
        out = bytearray()
        while size < 0 or len(out) < size:
            byte = self.read(1)
            if not byte:
                break
            out += byte
            if byte == b"\n":
                break
        return bytes(out)


class Handler(WSGIRequestHandler):
    def address_string(self):  # no reverse DNS look-ups
        return self.client_address[0]

    def handle(self):
        """wsgiref's own handle(), with a chunked request body decoded (see :class:`ChunkedInput`)."""
        from wsgiref.simple_server import ServerHandler

        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.requestline = self.request_version = self.command = ""
            self.send_error(414)
            return
        if not self.parse_request():
            return
        environ = self.get_environ()
        stream = self.rfile
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            stream = ChunkedInput(self.rfile)
            environ.pop("HTTP_TRANSFER_ENCODING", None)
            environ["wsgi.input_terminated"] = True
        handler = ServerHandler(stream, self.wfile, self.get_stderr(), environ, multithread=False)
        handler.request_handler = self
        handler.run(self.server.get_app())

    def log_message(self, format, *args):  # one line per request on stderr (the server log)
        sys.stderr.write("%s %s\n" % (self.client_address[0], format % args))


def exit_with_parent(parent_pid):
    """Exit as soon as PARENT_PID goes away (in a daemon thread), so a killed test run leaves no server."""

    def watch():
        while True:
            if os.getppid() != parent_pid:
                os._exit(0)
            time.sleep(1)

    threading.Thread(target=watch, daemon=True).start()


def serve(name, app, port):
    """Serve ``app`` on 127.0.0.1:PORT until killed."""
    httpd = make_server("127.0.0.1", port, app, server_class=ThreadingWSGIServer, handler_class=Handler)
    print(f"{name} listening on http://127.0.0.1:{port}", flush=True)
    httpd.serve_forever()
