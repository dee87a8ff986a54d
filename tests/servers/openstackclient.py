"""The ``openstack`` command (python-openstackclient), for the README's journeys run as written.

Installed on first use into a cached venv of its own (:func:`tests.servers.common.ensure_venv`), pinned
by the Keystone harness's constraints file so its OpenStack libraries are the ones the test cloud was
tested with; never into the project's venv. :func:`openstack_bin` is the directory to put on ``PATH``.
"""

from __future__ import annotations

from pathlib import Path

from tests.servers.common import ensure_venv
from tests.servers.keystone import CONSTRAINTS

OPENSTACKCLIENT = "python-openstackclient==10.5.0"
VENV_NAME = "openstackclient-10.5.0-venv"


def openstack_bin() -> Path:
    """The ``bin`` directory of the cached venv that holds the ``openstack`` command."""
    venv = ensure_venv(VENV_NAME, [OPENSTACKCLIENT], constraints=CONSTRAINTS,
                       check="import openstackclient.shell, openstackclient.image.v2.image")
    return venv / "bin"
