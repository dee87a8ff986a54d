"""Disk-image inspection and conversion with ``qemu-img`` (Debian's qemu-utils).

The backing chain is walked one layer at a time (``qemu-img info --output=json``
with an explicit format), checking each layer *before* opening the file it
points to: a backing file outside the image cache, a backing file whose format
is not recorded (format probing lets a raw image pose as qcow2), or a qcow2
external data file are refused without ever opening them.  This is the layer-
by-layer equivalent of ``qemu-img info --backing-chain``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from typing import Any

from imgsign.errors import BackendUnavailable, InputError, UnsafeImage

MAX_CHAIN = 16
FORMATS = ("raw", "qcow2")


@dataclasses.dataclass(frozen=True)
class Layer:
    """One file of a disk's backing chain."""

    path: str
    format: str
    backing: str | None
    backing_format: str | None


def _qemu_img() -> str:
    path = os.environ.get("IMGSIGN_QEMU_IMG") or shutil.which("qemu-img")
    if not path:
        raise BackendUnavailable("qemu-img is not installed (Debian package qemu-utils)")
    return path


def _info(path: str, fmt: str) -> dict[str, Any]:
    try:
        proc = subprocess.run(
            [_qemu_img(), "info", "--output=json", "-U", "-f", fmt, path],
            capture_output=True, text=True, timeout=60, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackendUnavailable(f"cannot run qemu-img: {exc}") from None
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise InputError(f"qemu-img cannot read {path} as {fmt}: {detail}")
    try:
        info = json.loads(proc.stdout)
    except ValueError:
        raise InputError(f"qemu-img printed no JSON for {path}") from None
    if not isinstance(info, dict):
        raise InputError(f"unexpected qemu-img output for {path}")
    return info


def inspect(path: str, fmt: str) -> Layer:
    """One layer; refuses formats other than raw/qcow2 and qcow2 external data files."""
    if fmt not in FORMATS:
        raise UnsafeImage(f"{path}: disk format {fmt!r} is not allowed (only {', '.join(FORMATS)})")
    info = _info(path, fmt)
    data = (info.get("format-specific") or {}).get("data") or {}
    if data.get("data-file"):
        raise UnsafeImage(f"{path}: qcow2 header names an external data file ({data['data-file']}); "
                          "such an image can read host files")
    backing = info.get("full-backing-filename") or info.get("backing-filename")
    if backing and not os.path.isabs(backing):
        backing = os.path.join(os.path.dirname(os.path.abspath(path)), backing)
    return Layer(os.path.abspath(path), fmt, backing, info.get("backing-filename-format"))


def backing_chain(path: str, fmt: str, allowed_dir: str) -> list[Layer]:
    """The chain ``[top, ..., base]``; every backing file must lie inside ``allowed_dir``."""
    allowed = os.path.realpath(allowed_dir) + os.sep
    chain = [inspect(path, fmt)]
    while (backing := chain[-1].backing) is not None:
        layer = chain[-1]
        real = os.path.realpath(backing)
        if not real.startswith(allowed):
            raise UnsafeImage(f"{layer.path}: backing file {layer.backing} is outside the image cache {allowed_dir}")
        if layer.backing_format is None:
            raise UnsafeImage(f"{layer.path}: backing file {layer.backing} has no recorded format "
                              "(probing it would let a raw image pose as qcow2)")
        if len(chain) >= MAX_CHAIN:
            raise UnsafeImage(f"{path}: backing chain longer than {MAX_CHAIN}")
        if not os.path.exists(real):
            raise InputError(f"{layer.path}: backing file {layer.backing} does not exist")
        chain.append(inspect(real, layer.backing_format))
    return chain


def detect_format(path: str) -> str:
    """``qcow2`` or ``raw``, for a freshly downloaded file (Glance's disk_format should agree)."""
    with open(path, "rb") as handle:
        magic = handle.read(4)
    return "qcow2" if magic == b"QFI\xfb" else "raw"


def convert_to_raw(source: str, fmt: str, destination: str) -> None:
    """What Nova's ``force_raw_images`` does after a download."""
    try:
        proc = subprocess.run(
            [_qemu_img(), "convert", "-f", fmt, "-O", "raw", source, destination],
            capture_output=True, text=True, timeout=3600, check=False,
        )
    except OSError as exc:
        raise BackendUnavailable(f"cannot run qemu-img: {exc}") from None
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise InputError(f"qemu-img cannot convert {source} to raw: {detail}")
