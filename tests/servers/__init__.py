"""Real OpenStack and key-manager servers for the server-backed tests.

Each module starts one server on 127.0.0.1 only, in a scratch directory, and
always stops it again (its whole process group):

- :mod:`tests.servers.openbao` — an OpenBao dev server (Vault API), used through
  castellan's ``vault`` backend;
- :mod:`tests.servers.keystone` — a real Keystone (fernet tokens, bootstrapped
  projects, users and service users), one per test session;
- :mod:`tests.servers.barbican` — a Barbican API behind that Keystone
  (keystonemiddleware), used through castellan's ``barbican`` backend;
- :mod:`tests.servers.glance` — a glance-api behind that Keystone, with imgsign's
  import plugins;
- :mod:`tests.servers.openstackclient` — the ``openstack`` command, for the README's
  journeys run as written;
- :mod:`tests.servers.hostile` — a stand-in for Glance, Keystone, a key manager and transit
  that misbehaves on purpose (stdlib only, nothing to install).

Beside them, for the compute side: :mod:`tests.servers.libvirt` runs a private
libvirtd (root, its own mount namespace) that boots real qemu guests through the
installed hook, and :mod:`tests.servers.nova` runs Nova 34's own image download
(``fetch_to_raw``) in a venv of its own.

The server software is installed on first use into virtualenvs kept under a cache
directory (``$IMGSIGN_TEST_CACHE``, else ``$XDG_CACHE_HOME/imgsign-tests``, else
``~/.cache/imgsign-tests``), never into the project's own venv: OpenStack services pin
dependencies that would clash with it. See :mod:`tests.servers.common`.
"""
