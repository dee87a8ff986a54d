"""What an image file is, decided the way Nova and Glance decide it: oslo.utils' ``format_inspector``.

Nova 34 (``nova.virt.images.fetch_to_raw`` before it converts a download, and
``nova.virt.libvirt.imagebackend``/``utils.create_image`` each time it builds an instance
disk on a base) and Glance 33 (the upload path in ``glance.location`` and the
``image_conversion`` import plugin) run the same steps before ``qemu-img`` ever sees an image:

1. **detection**: every inspector of ``format_inspector`` reads the file's first bytes at once
   (``InspectWrapper``, 4 KiB at a time, until each inspector has decided); no match is raw; two
   matches are refused ("one header hidden in another"), except ISO with a GPT in front, which is ISO;
2. **safety checks** of the detected format (``safety_check()``): qcow2 without backing file,
   without external data file, version 2 or 3 and no unknown incompatible feature; VMDK only
   monolithicSparse/streamOptimized with no extent outside the file; the MBR of a GPT disk well
   formed; QED always refused; LUKS only version 1;
3. **agreement with Glance's ``disk_format``**: the detected format must be the one Glance names
   (a GPT disk registered as ``raw`` is allowed, ISO is used as raw by qemu);
4. **qemu-img agrees**: ``qemu-img info`` (format probing, in a process with Nova's limits: 1 GiB
   of address space, 30 s of CPU), read with oslo.utils' ``imageutils.QemuImgInfo`` as Nova reads
   it, must see the same format, no backing file and no data file.

:func:`inspect_image` runs exactly these steps, with oslo.utils' own code for 1-3 (imgsign parses
no image header itself), and maps Nova's refusals to :class:`~imgsign.errors.UnsafeImage`
(exit 62).  On top of that, imgsign verifies only what qemu reads as ``raw`` (raw, GPT, ISO) or
``qcow2``: a VMDK, VHD, VHDX or VDI Nova would keep unconverted (``force_raw_images = False``) is refused.

Where each check runs, per call site (``qemu-img`` only where only qemu can answer):

* adoption of a base Nova wrote (:mod:`imgsign.compute.adoption`), ``boot cache``
  (:mod:`imgsign.compute.image_cache`, imgsign's own ``fetch_to_raw``) and the original of an
  adoption by conversion (:mod:`imgsign.compute.conversion_adoption`): all four steps, on the
  sealed or private file's descriptor, before anything else reads it; step 4 runs as ``nobody``
  when imgsign runs as root, so a header qemu-img would follow reaches nothing of root's.
  ``qemu-img convert`` then runs only on a file these steps accepted.
* the boot hook (:mod:`imgsign.compute.libvirt_hook`): a base it boots from carries a trust record
  made by the adoption above, and its content must still be the recorded bytes, so it is not
  inspected again (its format must be the recorded one).  The instance's own overlay is Nova's
  ``qemu-img create -b base`` output and legitimately has a backing file, which every
  ``format_inspector`` check refuses: its backing chain is read with ``qemu-img info``
  (:mod:`imgsign.compute.qemu_img`), the only reader that names the files qemu will open.  The
  hook's warm path therefore never imports ``format_inspector`` (about 65 ms of imports, mostly
  ``oslo_utils.strutils`` through ``oslo_utils.imageutils``): this module imports it lazily.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from imgsign.errors import InputError, MissingExtra, UnsafeImage

if TYPE_CHECKING:
    from oslo_utils.imageutils.format_inspector import FileInspector

#: What qemu opens each detected format as, for the formats imgsign verifies (Nova: ISO and a GPT disk are raw).
QEMU_FORMAT = {"raw": "raw", "gpt": "raw", "iso": "raw", "qcow2": "qcow2"}
#: Glance disk formats Nova lets through without a matching inspector (kernel, ramdisk, machine images).
AMI_FORMATS = ("ami", "aki", "ari")
#: How much ``InspectWrapper`` is given at a time (Nova's ``get_image_format``; Glance reads 4 KiB too).
CHUNK = 4096


@dataclasses.dataclass(frozen=True)
class Inspected:
    """An image that passed: ``detected`` is format_inspector's name (raw, gpt, iso, qcow2), ``format``
    what qemu opens it as (raw or qcow2), ``virtual_size`` the guest's disk size (qemu-img's)."""

    detected: str
    format: str
    virtual_size: int


def disk_format_of(document: Mapping[str, object]) -> str | None:
    """Glance's ``disk_format`` in an image document (``GET /v2/images/{id}``, ``openstack image show -f
    json``), if it names one."""
    value = document.get("disk_format")
    return value if isinstance(value, str) and value else None


def with_disk_format(document: object, properties: Mapping[str, object]) -> Mapping[str, object]:
    """``properties`` (found in ``document``) with the document's top-level ``disk_format`` (``openstack
    image show -f json`` nests the properties but not the disk format), so adoption can check it."""
    if not isinstance(document, Mapping) or "disk_format" in properties:
        return properties
    disk_format = disk_format_of(document)
    return properties if disk_format is None else {**properties, "disk_format": disk_format}


def _format_inspector() -> Any:
    try:
        from oslo_utils.imageutils import format_inspector
    except ImportError:
        raise MissingExtra("oslo.utils >= 7.3 (its imageutils.format_inspector) is needed to inspect images: "
                           "pip install 'oslo.utils>=7.3'") from None
    # Its warnings (which may quote an image's descriptor text) reach stderr through logging's last-resort
    # handler when nothing is configured; the refusal names the failed checks.
    import logging

    log = logging.getLogger(format_inspector.__name__)
    if not any(isinstance(handler, logging.NullHandler) for handler in log.handlers):
        log.addHandler(logging.NullHandler())
    return format_inspector


class _Reader:
    """``read``/``peek`` over a descriptor by offset (``os.pread``): the descriptor's position is not moved."""

    def __init__(self, fd: int) -> None:
        self.fd, self.offset = fd, 0

    def peek(self) -> bytes:
        return os.pread(self.fd, 1, self.offset)

    def read(self, size: int) -> bytes:
        data = os.pread(self.fd, size, self.offset)
        self.offset += len(data)
        return data


def detect(fd: int) -> FileInspector:
    """The inspector of the one format the file behind ``fd`` has, as Nova's ``get_image_format``
    decides it; raises format_inspector's ``ImageFormatError`` when several formats match."""
    fi = _format_inspector()
    reader = _Reader(fd)
    wrapper = fi.InspectWrapper(reader)
    try:
        while reader.peek():
            wrapper.read(CHUNK)
            if wrapper.formats:
                break
    finally:
        wrapper.close()
    try:
        return cast("FileInspector", wrapper.format)
    except fi.ImageFormatError:
        matched = {str(match): match for match in wrapper.formats or ()}
        if set(matched) == {"iso", "gpt"}:  # a bootable ISO may carry a GPT boot loader in front
            return cast("FileInspector", matched["iso"])
        raise


def check_format(fd: int, what: str, disk_format: str | None = None, *, may_be_converted: bool = True
                 ) -> tuple[str, str]:
    """Steps 1-3 of the module docstring: (detected format, what qemu opens it as), or :class:`UnsafeImage`.

    ``disk_format``: Glance's, when the file may be the image as Glance holds it.  A file qemu reads
    as raw while Glance names a format Nova converts (qcow2, vmdk, ...) is taken as Nova's conversion
    (``force_raw_images``), which Nova only requires to be raw, unless ``may_be_converted`` is False (the file
    is the download itself): the caller proves which it is."""
    fi = _format_inspector()
    if disk_format is not None and disk_format not in AMI_FORMATS and fi.get_inspector(disk_format) is None:
        raise UnsafeImage(f"{what}: Glance's disk_format {disk_format!r} is not a format Nova can inspect "
                          "(Nova: 'Image not in a supported format')")
    try:
        inspector = detect(fd)
        inspector.safety_check()
    except fi.SafetyCheckFailed as exc:
        checks = ", ".join(f"{name} ({failure})" for name, failure in sorted(exc.failures.items()))
        raise UnsafeImage(f"{what}: the {inspector} image fails oslo.utils' safety checks: {checks} "
                          "(Nova and Glance refuse it: 'Image does not pass safety check')") from None
    except fi.ImageFormatError as exc:
        raise UnsafeImage(f"{what}: its format cannot be told safely: {exc} (Nova refuses it)") from None
    except OSError as exc:
        raise InputError(f"cannot read {what}: {exc.strerror}") from None
    except Exception as exc:  # noqa: BLE001 - an inspector's parse error: Nova refuses the image then too
        raise UnsafeImage(f"{what}: oslo.utils' format inspection failed ({type(exc).__name__}) "
                          "(Nova: 'Image not in a supported format')") from None
    detected = str(inspector)
    if detected not in QEMU_FORMAT:
        raise UnsafeImage(f"{what} is a {detected} image: imgsign verifies only what qemu reads as raw or qcow2 "
                          f"({', '.join(QEMU_FORMAT)})")
    qemu_format = QEMU_FORMAT[detected]
    converted = may_be_converted and qemu_format == "raw" and disk_format not in (None, "raw", "iso", *AMI_FORMATS)
    if disk_format is not None and not converted and disk_format not in AMI_FORMATS and detected != disk_format \
            and not (disk_format == "raw" and detected == "gpt"):
        raise UnsafeImage(f"{what}: Glance says disk_format {disk_format!r} but its content is {detected} "
                          "(Nova: 'Image content does not match disk_format')")
    return detected, qemu_format


def inspect_image(fd: int, what: str, disk_format: str | None = None, *, may_be_converted: bool = True
                  ) -> Inspected:
    """All four steps of the module docstring on the file behind ``fd`` (``what`` names it in messages;
    ``disk_format``, ``may_be_converted``: as for :func:`check_format`).

    Raises :class:`UnsafeImage` for whatever Nova's ``fetch_to_raw`` would refuse (qemu-img failing to read
    a file format_inspector accepted included) and for formats other than raw/GPT/ISO/qcow2,
    :class:`InputError` when the file cannot be read, :class:`~imgsign.errors.BackendUnavailable` when
    qemu-img cannot run."""
    from imgsign.compute import qemu_img

    detected, qemu_format = check_format(fd, what, disk_format, may_be_converted=may_be_converted)
    try:
        info = qemu_img.probe(fd, what)
    except InputError as exc:  # format_inspector accepted what qemu cannot open: they disagree
        raise UnsafeImage(f"{what}: format inspection says {detected} but {exc.message} "
                          "(Nova refuses what qemu-img cannot read)") from None
    if info.format != qemu_format:
        raise UnsafeImage(f"{what}: format inspection says {detected} but qemu-img reads it as {info.format} "
                          "(Nova: 'Image content does not match disk_format')")
    if info.backing is not None:
        raise UnsafeImage(f"{what}: qemu-img sees a backing file ({info.backing}); Nova refuses such images")
    if info.data_file is not None:
        raise UnsafeImage(f"{what}: qemu-img sees an external data file ({info.data_file}); Nova refuses such images")
    if info.virtual_size is None:
        raise InputError(f"qemu-img did not say the virtual size of {what}")
    return Inspected(detected, qemu_format, info.virtual_size)
