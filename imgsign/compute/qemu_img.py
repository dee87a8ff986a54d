"""Disk-image inspection and conversion with ``qemu-img`` (Debian's qemu-utils).

The backing chain is walked one layer at a time (``qemu-img info --output=json``
with an explicit format; ``qemu-img info`` never opens the backing file; a raw
layer has no header, so it names nothing and is not handed to ``qemu-img``), checking
each layer *before* opening the file it points to.  A reference is followed only
when qemu would open it as a plain local file: a backing name that qemu reads as
``protocol:...`` (``json:{...}``, ``nbd:``, ``file:``, ``host_device:``, ...: a colon
before the first slash), one with a ``..`` component, one outside the image cache,
one whose format is not recorded (format probing lets a raw image pose as qcow2),
or one reached through a symbolic link is refused, and so is a qcow2 external
data file.  This is the layer-by-layer equivalent of ``qemu-img info --backing-chain``.

Under root, ``qemu-img info`` of a file someone else owns (the instance's overlay: nova's or the
qemu user's) runs as that owner: a header crafted against qemu-img's parsers, or naming files
qemu-img opens (VMDK extents), gains nothing beyond the rights of whoever wrote it.

:func:`probe` is the other use of ``qemu-img info``: Nova's cross-check that qemu sees the format
``format_inspector`` detected (:mod:`imgsign.compute.image_format`, which runs first).  It probes
the format, so it runs with Nova's limits and, under root, as ``nobody``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import subprocess

from imgsign.errors import BackendUnavailable, InputError, UnsafeImage

#: ``typing.TYPE_CHECKING`` without importing typing, which the hook's every call would pay for (mypy
#: treats any name TYPE_CHECKING so).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

MAX_CHAIN = 16
FORMATS = ("raw", "qcow2")
#: Nova's image cache: ``$instances_path/_base``.
CACHE = "_base"


@dataclasses.dataclass(frozen=True)
class Layer:
    """One file of a disk's backing chain; ``backing`` is the name as written in its header."""

    path: str
    format: str
    backing: str | None
    backing_format: str | None
    full_backing: str | None = None
    #: the disk's size as the guest sees it (a raw conversion's size); None if qemu-img did not say
    virtual_size: int | None = None


def _qemu_img() -> str:
    path = os.environ.get("IMGSIGN_QEMU_IMG") or shutil.which("qemu-img")
    if not path:
        raise BackendUnavailable("qemu-img is not installed (Debian package qemu-utils)")
    return path


#: Nova's ``QEMU_IMG_LIMITS`` around ``qemu-img info``: 1 GiB of address space, 30 s of CPU.
PROBE_ADDRESS_SPACE = 1 << 30
PROBE_CPU_SECONDS = 30


def _probe_limits() -> Callable[[], None]:
    """The ``preexec_fn`` that sets the limits in the child (imported here: never import in the child)."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (PROBE_ADDRESS_SPACE, PROBE_ADDRESS_SPACE))
        resource.setrlimit(resource.RLIMIT_CPU, (PROBE_CPU_SECONDS, PROBE_CPU_SECONDS))
    return limit


def _unprivileged() -> dict[str, Any]:
    """``subprocess`` arguments that run a child as ``nobody`` (no groups) when we are root, else nothing."""
    if os.geteuid() != 0:
        return {}
    import pwd  # not at the top: the hook's warm path has no use for it

    try:
        nobody = pwd.getpwnam("nobody")
        uid, gid = nobody.pw_uid, nobody.pw_gid
    except KeyError:
        uid = gid = 65534
    return {"user": uid, "group": gid, "extra_groups": []}


def _as_owner(path: str) -> dict[str, Any]:
    """``subprocess`` arguments that run a child as the owner of ``path`` (no groups) when we are root and
    it is not: qemu-img parses what the owner (nova, the qemu user) wrote with the owner's rights."""
    if os.geteuid() != 0:
        return {}
    try:
        info = os.stat(path, follow_symlinks=False)
    except OSError:
        return {}  # qemu-img reports the error
    return {} if info.st_uid == 0 else {"user": info.st_uid, "group": info.st_gid, "extra_groups": []}


def _run_info(path: str, fmt: str | None, fd: int | None = None) -> str:
    """``qemu-img info``'s JSON for ``path`` read as ``fmt``; ``fmt=None`` probes the format (limited,
    unprivileged) of the file behind our descriptor ``fd``, handed to the child (``path`` only names it
    in errors)."""
    target = path if fd is None else f"/proc/self/fd/{fd}"
    command = [_qemu_img(), "info", "--output=json", "-U"] + (["-f", fmt] if fmt else []) + [target]
    extra: dict[str, Any] = _as_owner(path) if fmt else {"preexec_fn": _probe_limits(), **_unprivileged()}
    if fd is not None:
        extra["pass_fds"] = (fd,)
    try:
        proc = subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=60, check=False,
                              **extra)
    except (OSError, subprocess.TimeoutExpired, subprocess.SubprocessError) as exc:
        raise BackendUnavailable(f"cannot run qemu-img: {exc}") from None
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["unknown error"])[-1].replace(target, path)
        raise InputError(f"qemu-img cannot read {path}{' as ' + fmt if fmt else ''}: {detail}")
    return str(proc.stdout)


def _info(path: str, fmt: str) -> dict[str, Any]:
    """``qemu-img info -f fmt`` of ``path``, parsed (as its owner: :func:`_as_owner`)."""
    stdout = _run_info(path, fmt)
    try:
        info = json.loads(stdout)
    except ValueError:
        raise InputError(f"qemu-img printed no JSON for {path}") from None
    if not isinstance(info, dict):
        raise InputError(f"unexpected qemu-img output for {path}")
    return info


def _text(info: dict[str, Any], key: str) -> str | None:
    value = info.get(key)
    return value if isinstance(value, str) else None


def inspect(path: str, fmt: str) -> Layer:
    """One layer; refuses formats other than raw/qcow2 and qcow2 external data files."""
    if fmt not in FORMATS:
        raise UnsafeImage(f"{path}: disk format {fmt!r} is not allowed (only {', '.join(FORMATS)})")
    info = _info(path, fmt)
    specific = info.get("format-specific")
    data = specific.get("data") if isinstance(specific, dict) else None
    if isinstance(data, dict) and data.get("data-file"):
        raise UnsafeImage(f"{path}: qcow2 header names an external data file ({data['data-file']}); "
                          "such an image can read host files")
    backing = _text(info, "backing-filename")
    if backing is None and "full-backing-filename" in info:
        backing = _text(info, "full-backing-filename") or ""
    size = info.get("virtual-size")
    return Layer(os.path.abspath(path), fmt, backing, _text(info, "backing-filename-format"),
                 _text(info, "full-backing-filename"),
                 size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None)


@dataclasses.dataclass(frozen=True)
class Probed:
    """What ``qemu-img info`` (format probed) says of a file: its format, backing name and data file."""

    format: str
    backing: str | None
    data_file: str | None
    virtual_size: int | None


def probe(fd: int, what: str) -> Probed:
    """``qemu-img info`` without ``-f`` of the file behind ``fd``: the format qemu itself finds, as Nova's
    ``fetch_to_raw`` asks it after format inspection.  Only for a file
    :func:`imgsign.compute.image_format.check_format` accepted; under root the file must be readable by
    others (the child runs as ``nobody``)."""
    # Read as Nova reads it: oslo.utils' QemuImgInfo (already loaded with format_inspector, which runs first).
    from oslo_utils.imageutils import QemuImgInfo

    stdout = _run_info(what, None, fd)
    try:
        info = QemuImgInfo(stdout, format="json")
    except (ValueError, AttributeError):
        raise InputError(f"qemu-img printed no JSON object for {what}") from None
    try:
        data_file = info.format_specific["data"]["data-file"]  # as nova.virt.images.fetch_to_raw looks it up
    except (KeyError, TypeError, AttributeError):
        data_file = None
    size = info.virtual_size
    return Probed(info.file_format if isinstance(info.file_format, str) else "?",
                  None if info.backing_file is None else str(info.backing_file),
                  None if data_file is None else str(data_file),
                  size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None)


def has_protocol(name: str) -> bool:
    """Whether qemu reads ``name`` as ``protocol:...`` rather than a file name (its path_has_protocol).

    Covers ``json:{...}`` block-device specs and every protocol driver (``nbd:``, ``file:``,
    ``host_device:``, ``http:``, ...), known to this qemu or not.
    """
    head = name.split("/", 1)[0]
    return ":" in head


def plain_path(name: str, relative_to: str, what: str) -> str:
    """The local file qemu opens for file name ``name`` (relative names: next to ``relative_to``).

    Raises :class:`UnsafeImage` unless ``name`` is a plain path without ``..`` components.
    """
    if not name:
        raise UnsafeImage(f"{what} is empty")
    if "\ufffd" in name:
        raise UnsafeImage(f"{what} {name!r} is not valid UTF-8: qemu-img replaced bytes of it, so which file "
                          "qemu would open cannot be checked")
    if has_protocol(name):
        raise UnsafeImage(f"{what} {name!r} is not a plain file name: qemu would open it as a protocol or "
                          "JSON block-device specification")
    if ".." in name.split("/"):
        raise UnsafeImage(f"{what} {name!r} contains '..'")
    joined = name if os.path.isabs(name) else os.path.join(os.path.dirname(relative_to), name)
    return os.path.normpath(joined)


def below(path: str, root: str) -> list[str] | None:
    """The components of ``path`` below directory ``root`` (or its real path); None if not below it."""
    for prefix in dict.fromkeys((os.path.normpath(root), os.path.realpath(root))):
        relative = os.path.relpath(path, prefix) if os.path.isabs(path) else ".."
        if relative != "." and relative.split(os.sep, 1)[0] != "..":
            return [prefix, *relative.split(os.sep)]
    return None


def in_cache(path: str, root: str) -> bool:
    """Whether ``path`` lies in the image cache ``root/_base`` (or a subdirectory), by name.

    Only ``root`` (the operator's instances_path) may be reached through a link: ``_base`` itself
    may not, so :func:`check_no_symlink` refuses a ``_base`` that is a link.
    """
    parts = below(path, root)
    return parts is not None and len(parts) > 2 and parts[1] == CACHE


def check_no_symlink(path: str, root: str) -> None:
    """Refuse ``path`` unless it is a regular file reached from ``root`` without any symbolic link.

    ``root`` itself (e.g. Nova's instances_path) is the operator's and may be a link; when ``path``
    is not below it only its last component is checked.
    """
    parts = below(path, root) or [os.path.dirname(path), os.path.basename(path)]
    current = parts[0]
    for part in parts[1:]:
        current = os.path.join(current, part)
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            raise InputError(f"{path} does not exist") from None
        except OSError as exc:
            raise InputError(f"cannot inspect {current}: {exc.strerror}") from None
        if stat.S_ISLNK(mode):
            raise UnsafeImage(f"{path}: {current} is a symbolic link; Nova never makes one there, and qemu "
                              "would open whatever it points to at start")
    if not stat.S_ISREG(mode):
        raise InputError(f"{path} is not a regular file")


def backing_path(layer: Layer, root: str) -> tuple[str, str]:
    """The checked local file ``layer``'s backing name makes qemu open (in ``root/_base``), and its format."""
    what = f"{layer.path}: backing file"
    path = plain_path(layer.backing or "", layer.path, what)
    if layer.full_backing is not None and os.path.normpath(layer.full_backing) != path:
        raise UnsafeImage(f"{what} {layer.backing!r} resolves to {layer.full_backing!r} for qemu, "
                          f"not {path!r}")
    if not in_cache(path, root):
        raise UnsafeImage(f"{what} {layer.backing} is outside the image cache {os.path.join(root, CACHE)}")
    if layer.backing_format is None:
        raise UnsafeImage(f"{what} {layer.backing} has no recorded format "
                          "(probing it would let a raw image pose as qcow2)")
    return path, layer.backing_format


def open_layer(path: str, fmt: str, root: str) -> Layer:
    """Inspect ``path`` as ``fmt`` after checking it is a regular file reached without symbolic links.

    A raw layer is not handed to ``qemu-img``: raw has no header, so qemu reads no backing name, data
    file or other reference from it, and ``qemu-img info -f raw`` could only report its size (about
    6 ms of each hook call per raw layer). Every check of the path is made as for qcow2."""
    if ".." in path.split("/"):
        raise UnsafeImage(f"{path} contains '..'")
    check_no_symlink(path, root)
    if fmt == "raw":
        return Layer(os.path.abspath(path), fmt, None, None)
    return inspect(path, fmt)


def follow(chain: list[Layer], root: str) -> list[Layer]:
    """Extend ``chain`` along its last layer's backing names (each a plain file in ``root/_base``)."""
    while chain[-1].backing is not None:
        layer = chain[-1]
        backing, backing_format = backing_path(layer, root)
        if len(chain) >= MAX_CHAIN:
            raise UnsafeImage(f"{chain[0].path}: backing chain longer than {MAX_CHAIN}")
        chain.append(open_layer(backing, backing_format, root))
    return chain


def backing_chain(path: str, fmt: str, root: str) -> list[Layer]:
    """The chain ``[top, ..., base]``; every backing file must be a plain file in the image cache
    ``root/_base`` (``root``: Nova's instances_path), and no file of the chain may be reached
    through a symbolic link below ``root``."""
    return follow([open_layer(os.path.abspath(path), fmt, root)], root)


def convert_to_raw(source: str, fmt: str, destination: str, timeout: float = 3600) -> None:
    """What Nova's ``force_raw_images`` does after a download; at most ``timeout`` seconds."""
    try:
        proc = subprocess.run(
            [_qemu_img(), "convert", "-f", fmt, "-O", "raw", source, destination],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
    except OSError as exc:
        raise BackendUnavailable(f"cannot run qemu-img: {exc}") from None
    except subprocess.TimeoutExpired:
        raise InputError(f"qemu-img did not convert {source} to raw within {timeout:g} s") from None
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise InputError(f"qemu-img cannot convert {source} to raw: {detail}")
