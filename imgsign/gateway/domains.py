"""Which domains are defined on this host, and for which project: asked of libvirt, read-only.

:class:`DomainLookup` is the small interface the gateway needs; :class:`VirshDomains` answers it with
``virsh --readonly`` (no libvirt binding to install), parsing Nova's ``<nova:owner>`` metadata.
"""

from __future__ import annotations

import abc
import asyncio
import re

from imgsign.errors import InputError
from imgsign.gateway.intercept import DomainInfo

NOVA_NS_PREFIX = "http://openstack.org/xmlns/libvirt/nova/"
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
#: Most bytes of a domain XML read from virsh.
MAX_XML = 4 * 1024 * 1024


class DomainLookup(abc.ABC):
    """Tells whether an instance runs on this host and who owns it."""

    @abc.abstractmethod
    async def find(self, instance_uuid: str) -> DomainInfo | None:
        """The domain with that uuid, or None if this host has none."""


def owner_project(xml: bytes) -> tuple[str, str | None]:
    """The domain's uuid and Nova's owner project id (``<nova:owner><nova:project uuid=...>``), from its XML."""
    from xml.etree import ElementTree as ET

    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import fromstring

    try:
        root = fromstring(xml, forbid_dtd=True)
    except (ET.ParseError, DefusedXmlException, ValueError, LookupError, UnicodeError) as exc:
        raise InputError(f"libvirt's domain XML is unreadable ({type(exc).__name__})") from None
    if root.tag != "domain":
        raise InputError("libvirt's answer is not a <domain> document")
    projects = {element.get("uuid") for element in root.iter()
                if isinstance(element.tag, str) and element.tag.startswith("{" + NOVA_NS_PREFIX)
                and element.tag.endswith("}project")}
    if len(projects) > 1:
        raise InputError("the domain XML names more than one owner project")
    return (root.findtext("uuid") or "").strip().lower(), (projects.pop() if projects else None) or None


class VirshDomains(DomainLookup):
    """``virsh --readonly -c URI``: ``domstate`` and ``dumpxml`` of the domain with that uuid."""

    def __init__(self, uri: str = "qemu:///system", timeout: float = 30.0) -> None:
        self.uri = uri
        self.timeout = timeout

    async def _virsh(self, *args: str) -> tuple[int, bytes]:
        process = await asyncio.create_subprocess_exec(
            "virsh", "--readonly", "-q", "-c", self.uri, *args, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env={"LC_ALL": "C", "PATH":
                                                                                  "/usr/bin:/bin"})
        try:
            out, _ = await asyncio.wait_for(process.communicate(), self.timeout)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()
            raise InputError(f"virsh {args[0]} did not answer within {self.timeout:g} s") from None
        return process.returncode or 0, out[:MAX_XML + 1]

    async def find(self, instance_uuid: str) -> DomainInfo | None:
        if not _UUID.fullmatch(instance_uuid):
            return None
        status, state = await self._virsh("domstate", "--domain", instance_uuid)
        if status != 0:
            return None  # no such domain (or libvirt unreachable: then nothing is signed either)
        status, xml = await self._virsh("dumpxml", "--domain", instance_uuid)
        if status != 0 or len(xml) > MAX_XML:
            return None
        uuid, project = owner_project(xml)
        return DomainInfo(uuid, state.decode("ascii", "replace").strip(), project)
