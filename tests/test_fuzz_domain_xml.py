"""Fuzzing the boot hook's domain-XML parser: any input parses or raises an ImgsignError.

``IMGSIGN_FUZZ_EXAMPLES`` sets the number of examples per test (default 200, a few seconds);
run it longer by hand, e.g. ``IMGSIGN_FUZZ_EXAMPLES=20000``.
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgsign.compute.libvirt_hook import Domain, parse_domain
from imgsign.errors import ImgsignError
from tests.test_boot_hook import domain_xml
from tests.test_hook_hardening import UNVERIFIABLE, backing_store, file_disk, kernel_xml

EXAMPLES = int(os.environ.get("IMGSIGN_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: A real domain XML with every element the hook reads: nested backingStore, dataStore, kernel, loader,
#: non-file disks and a filesystem share.
REAL = domain_xml(
    "6f1c1b4e-3c51-4b8e-9d1a-0d6c0b0e5a11", "2f0e8f7a-1111-4222-8333-944455556666",
    [("/var/lib/nova/instances/i/disk", "qcow2")],
    os_extra=kernel_xml(Path("/var/lib/nova/instances/i"))
    + '\n    <loader readonly="yes" type="pflash">/usr/share/OVMF/OVMF_CODE.fd</loader><nvram>/v/nvram.fd</nvram>',
    devices_extra=file_disk("/var/lib/nova/instances/i/disk.eph0", "qcow2", "vdb",
                            source_inner='<dataStore type="file"><format type="raw"/><source file="/d"/></dataStore>',
                            inner=backing_store("/var/lib/nova/instances/_base/x", complete=False)
                            + backing_store("", kind="network"))
    + "".join("\n    " + element for _, element in UNVERIFIABLE.values()),
).replace("</domain>", '<sysinfo type="fwcfg"><entry name="opt/x" file="/f"/></sysinfo>'
                       '<qemu:commandline xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0">'
                       '<qemu:arg value="-snapshot"/></qemu:commandline></domain>').encode()


def check(data: bytes | str) -> None:
    try:
        domain = parse_domain(data)
    except ImgsignError:
        return
    assert isinstance(domain, Domain)


def test_the_real_document_parses():
    domain = parse_domain(REAL)
    assert domain.image_id == "2f0e8f7a-1111-4222-8333-944455556666"
    assert [d.type for d in domain.disks] == ["file", "file", "block", "block", "network", "volume", "dir"]
    assert domain.disks[1].backing_store is not None and not domain.disks[1].backing_complete
    assert [b.role for b in domain.boot_files] == ["kernel", "initrd", "loader", "nvram", "fw_cfg"]
    assert [o.type for o in domain.others] == ["hostdev", "memory", "qemu:commandline"]


@FUZZ
@given(st.binary(max_size=2048))
def test_arbitrary_bytes(data):
    check(data)


@FUZZ
@given(st.text(max_size=1024))
def test_arbitrary_text(text):
    check(text)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """The real document with a few bytes replaced, inserted or removed."""
    data = bytearray(REAL)
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["replace", "insert", "delete"]))
        chunk = draw(st.binary(min_size=1, max_size=16) | st.sampled_from(
            [b"<", b">", b"&", b'"', b"\xff", b"\xc3", b"]]>", b"<!DOCTYPE d [<!ENTITY e 'x'>]>", b"&e;",
             b'<?xml version="1.0" encoding="UTF-16"?>', b"<backingStore/>", b"\x00"]))
        if action == "replace":
            data[at:at + len(chunk)] = chunk
        elif action == "insert":
            data[at:at] = chunk
        else:
            del data[at:at + len(chunk)]
    return bytes(data)


@FUZZ
@given(mutated())
def test_mutated_real_domain_xml(data):
    check(data)


@FUZZ
@given(mutated())
def test_mutated_real_domain_xml_as_text(data):
    check(data.decode("utf-8", errors="surrogateescape"))
