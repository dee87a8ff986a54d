"""Serve the Barbican API (behind Keystone) on 127.0.0.1 with a threaded wsgiref server.

Run by tests/servers/barbican.py with the cached Barbican venv's Python (not the
project's), as ``serve.py PORT PARENT_PID``. Barbican's packaged WSGI entry point
hard-codes /etc paths; this loads api-paste.ini from this directory instead.
oslo.config reads ``$HOME/.barbican/barbican.conf``, so the harness points HOME at
the server's scratch directory. Exits by itself if PARENT_PID goes away, so a killed
test run cannot leave the server behind.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# tests/servers/child/ holds only wsgi_child (tests/servers/ itself would shadow the barbican package)
sys.path.append(os.path.join(os.path.dirname(HERE), "child"))

import wsgi_child  # noqa: E402


def main():
    port, parent_pid = int(sys.argv[1]), int(sys.argv[2])
    from paste import deploy

    app = deploy.loadapp("config:" + os.path.join(HERE, "api-paste.ini"))
    wsgi_child.exit_with_parent(parent_pid)
    wsgi_child.serve("barbican", app, port)


if __name__ == "__main__":
    main()
