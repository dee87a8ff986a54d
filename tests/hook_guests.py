"""Nova-shaped guests under the private libvirtd (tests/servers/libvirt.py), and imgsign's hook there set up
as a compute host runs it: enforce, a trust policy with a ``hostSigned`` rule, self-adoption from Glance and
the key manager (TEST ONLY; shared by the host-signed boot tests).

A guest is what Nova 34 defines for an image-backed instance of a project: a qcow2 overlay in
``instances/<uuid>/disk`` on a raw base in ``_base``, the domain XML of tests/test_libvirt_e2e.py with
that project as ``<nova:owner>``; libvirt starts it through the installed hook.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

from tests.servers.glance import GlanceServer
from tests.servers.libvirt import Libvirt
from tests.test_boot_hook import Host
from tests.test_libvirt_e2e import nova_domain_xml
from tests.test_real_images import qemu

#: The project uuid nova_domain_xml writes into ``<nova:owner>``; replaced by the guest's project.
XML_PROJECT = "0b0c1a4b1f0d4f7a8c5e2d3f4a5b6c7d"

#: A trust policy as an operator of a host running the gateway writes it (doc/source/user/
#: trust-policy.example.yaml, rule host-snapshots): a snapshot must be signed by a compute host of the
#: compute CA (this host's URI SAN), with a provenance naming the booting project as its owner, made from
#: a base whose signer chained to the image team's CA; every other image must be the image team's.
HOST_SIGNED_POLICY = """\
version: 1
trustStores:
  compute-hosts: {{certificates: [{compute_ca}]}}
  image-team: {{certificates: [{image_ca}]}}
rules:
  - name: own-host-signed-snapshots
    scope: {{imageType: [snapshot, backup]}}
    level: strict
    trustStores: [compute-hosts]
    trustedIdentities: [{{sanUri: "{host_uri}"}}]
    hostSigned:
      baseTrustStores: [image-team]
      baseIdentities: [{base_identity}]
  - name: default
    scope: "*"
    level: strict
    trustStores: [image-team]
    trustedIdentities: ["*"]
"""


def write_host_signed_policy(path: Path, *, compute_ca: Path, image_ca: Path, host_uri: str,
                             base_subject: str | None = None) -> Path:
    """:data:`HOST_SIGNED_POLICY` at ``path`` (``base_subject``: the base signer's subject, None: any)."""
    identity = f'{{subject: "{base_subject}"}}' if base_subject else '"*"'
    path.write_text(HOST_SIGNED_POLICY.format(compute_ca=compute_ca, image_ca=image_ca, host_uri=host_uri,
                                              base_identity=identity))
    return path


def configure_adopting_hook(libvirt: Libvirt, host: Host, *, policy: Path, glance: GlanceServer, keystore: Path,
                            project: str, project_id: str, extra: str = "") -> None:
    """The hook's boot.conf: ``enforce`` under ``policy``, the layout of ``host`` (tests/test_boot_hook.py's
    ``Host``: instances path, state directory, log), adoption from ``glance`` as an admin user of
    ``project`` (Keystone name) and from the embedded key manager at ``keystore`` (``project_id``).
    ``extra``: more ``[boot]`` lines."""
    user = glance.keystone.project_user(project, ("admin", "member")).user
    libvirt.boot_config.write_text(
        f"[boot]\nmode = enforce\npolicy_file = {policy}\ninstances_path = {host.instances}\n"
        f"state_dir = {host.state}\nlog_file = {host.log}\nadopt_timeout = 30\n{extra}"
        f"\n[glance]\nendpoint_override = {glance.url}\n{glance.keystone.keystoneauth_options(user)}\n"
        f"[key_manager]\nbackend = imgsign\n\n[imgsign_embedded]\npath = {keystore}\n\n"
        f"[imgsign]\nproject_id = {project_id}\n")


def define_guest(libvirt: Libvirt, disk: Path, image_id: str, project_id: str) -> str:
    """Define the domain Nova writes for instance ``disk.parent.name`` of ``project_id``, booted from
    ``image_id`` with ``disk``; its name."""
    name = f"instance-{uuid.uuid4().hex[:8]}"
    xml = nova_domain_xml(name, disk.parent.name, image_id, disk)
    assert f'uuid="{XML_PROJECT}"' in xml
    (disk.parent / "libvirt.xml").write_text(xml.replace(f'uuid="{XML_PROJECT}"', f'uuid="{project_id}"'))
    libvirt.virsh("define", str(disk.parent / "libvirt.xml"))
    return name


def new_disk(instances: Path, base: Path) -> Path:
    """A new instance directory under ``instances`` with its disk: a qcow2 overlay on the raw ``base``."""
    disk = instances / str(uuid.uuid4()) / "disk"
    disk.parent.mkdir(parents=True)
    qemu("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", disk)
    return disk


def boot_guest(libvirt: Libvirt, instances: Path, base: Path, image_id: str,
               project_id: str) -> tuple[str, subprocess.CompletedProcess[str]]:
    """A new instance of ``project_id`` on ``image_id`` (cached as ``base``), started: (name, ``virsh start``)."""
    name = define_guest(libvirt, new_disk(instances, base), image_id, project_id)
    return name, libvirt.virsh("start", name, check=False)
