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


class Handler(WSGIRequestHandler):
    def address_string(self):  # no reverse DNS look-ups
        return self.client_address[0]

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
