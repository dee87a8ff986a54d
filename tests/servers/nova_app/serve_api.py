"""Serve Nova 34's compute API (``nova.wsgi.osapi_compute``) on 127.0.0.1 with a threaded wsgiref server.

Run by tests/servers/nova_api.py with the cached Nova venv's Python, as ``serve_api.py PORT PARENT_PID``,
with ``OS_NOVA_CONFIG_DIR`` naming the directory of ``nova.conf`` and ``api-paste.ini``. Nova's own WSGI
entry point (the module uWSGI or mod_wsgi would load: config, service record, paste pipeline with
keystonemiddleware) is imported as is and served by the standard library's server.

Nova's RPC casts (``[DEFAULT] transport_url = fake://``) stay in this process: oslo.messaging's in-memory
driver. ``conductor.py`` answers the two casts the tests need in place of nova-conductor, nova-scheduler
and nova-compute (see there). Exits by itself if PARENT_PID goes away.

There is no Neutron either: ``GET /servers/{id}`` asks Neutron for the server's ports (to show its
security groups), so a thread here answers Neutron's ``GET /v2.0/ports`` on NEUTRON_PORT (``[neutron]
endpoint_override``) with no ports, as Neutron does for a server created with ``networks: none``.
Run as ``serve_api.py PORT NEUTRON_PORT PARENT_PID``.
"""

import faulthandler
import json
import os
import signal
import sys
import threading

# tests/servers/child/ holds only wsgi_child; this directory holds conductor.py
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.append(os.path.join(os.path.dirname(HERE), "child"))
sys.path.append(HERE)

import wsgi_child  # noqa: E402


def no_ports(environ, start_response):
    """Neutron's answer for a server with no network: no ports (anything else: 404)."""
    if environ["REQUEST_METHOD"] == "GET" and environ["PATH_INFO"].rstrip("/") == "/v2.0/ports":
        body = json.dumps({"ports": []}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    start_response("404 Not Found", [("Content-Length", "0")])
    return [b""]


def main():
    port, neutron_port, parent_pid = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    wsgi_child.exit_with_parent(parent_pid)
    sys.argv = [sys.argv[0]]  # Nova's config parser reads sys.argv
    # Nova's WSGI module first: it applies Nova's monkey patching before anything else of Nova loads.
    from nova.wsgi import osapi_compute  # noqa: I001 - the application, as a WSGI server loads it

    import conductor

    conductor.start()
    threading.Thread(target=wsgi_child.serve, args=("neutron stand-in", no_ports, neutron_port), daemon=True).start()
    wsgi_child.serve("nova-api", osapi_compute.application, port)


if __name__ == "__main__":
    main()
