"""Serve the Keystone API on 127.0.0.1 with a threaded wsgiref server.

Run by tests/servers/keystone.py with the cached Keystone venv's Python (not the
project's), as ``serve.py PORT PARENT_PID``. Keystone reads its configuration from
``$OS_KEYSTONE_CONFIG_DIR/keystone.conf`` (set by the harness), exactly as its own
WSGI entry point ``keystone.wsgi.api`` does. Exits by itself if PARENT_PID goes
away, so a killed test run cannot leave the server behind.
"""

import os
import sys

# tests/servers/child/ holds only wsgi_child (tests/servers/ itself would shadow the keystone package)
sys.path.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "child"))

import wsgi_child  # noqa: E402


def main():
    port, parent_pid = int(sys.argv[1]), int(sys.argv[2])
    wsgi_child.exit_with_parent(parent_pid)
    del sys.argv[1:]  # Keystone parses the command line as oslo.config options
    from keystone.server import wsgi

    app = wsgi.initialize_public_application()
    wsgi_child.serve("keystone", app, port)


if __name__ == "__main__":
    main()
