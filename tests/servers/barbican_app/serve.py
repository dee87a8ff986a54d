"""Serve the keystone-less Barbican API on 127.0.0.1 with a threaded wsgiref server.

Run by tests/servers/barbican.py with the cached Barbican venv's Python (not the
project's), as ``serve.py PORT PARENT_PID``. Barbican's packaged WSGI entry point
hard-codes /etc paths; this loads api-paste.ini from this directory instead.
oslo.config reads ``$HOME/.barbican/barbican.conf``, so the harness points HOME at
the server's scratch directory. Exits by itself if PARENT_PID goes away, so a killed
test run cannot leave the server behind.
"""

import os
import sys
import threading
import time
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

HERE = os.path.dirname(os.path.abspath(__file__))


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class Handler(WSGIRequestHandler):
    def address_string(self):  # no reverse DNS look-ups
        return self.client_address[0]


def exit_with_parent(parent_pid):
    while True:
        if os.getppid() != parent_pid:
            os._exit(0)
        time.sleep(1)


def main():
    port, parent_pid = int(sys.argv[1]), int(sys.argv[2])
    from paste import deploy

    app = deploy.loadapp("config:" + os.path.join(HERE, "api-paste.ini"))
    httpd = make_server("127.0.0.1", port, app, server_class=ThreadingWSGIServer, handler_class=Handler)
    threading.Thread(target=exit_with_parent, args=(parent_pid,), daemon=True).start()
    print(f"barbican listening on http://127.0.0.1:{port}", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
