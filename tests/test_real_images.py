"""Real disk images made with qemu-img/qemu-io (Debian's qemu-utils; .ci/run installs it)."""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys

import pytest

from imgsign import errors
from tests.conftest import CERT_UUID, cert_of, key_of, run_cli


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is required (Debian package qemu-utils; .ci/run installs it)")
    return path


def qemu(*args: object) -> None:
    subprocess.run([tool(str(args[0])), *map(str, args[1:])], check=True, capture_output=True, timeout=120)


@pytest.fixture
def qcow2(tmp_path):
    """A 1 GiB qcow2 with some guest data written through qemu-io."""
    path = tmp_path / "disk.qcow2"
    qemu("qemu-img", "create", "-q", "-f", "qcow2", path, "1G")
    qemu("qemu-io", "-f", "qcow2", "-c", "write -P 0xab 0 4M", "-c", "write -P 0x5c 512M 1M", path)
    return path


def sign_and_verify(image, tmp_path):
    signed = run_cli("sign", image, "--key", key_of("RSA-PSS"), "--cert", cert_of("RSA-PSS"), "--cert-uuid", CERT_UUID)
    assert signed.code == 0, signed
    props = tmp_path / "props.json"
    props.write_text(signed.stdout)
    return props, run_cli("verify", image, "--properties", props, "--cert", cert_of("RSA-PSS"))


def test_qcow2_signs_and_verifies_and_guest_writes_are_caught(qcow2, tmp_path):
    props, verified = sign_and_verify(qcow2, tmp_path)
    assert verified.code == 0, verified
    qemu("qemu-io", "-f", "qcow2", "-c", "write -P 0x00 4096 1", qcow2)  # one guest byte
    changed = run_cli("verify", qcow2, "--properties", props, "--cert", cert_of("RSA-PSS"))
    assert changed.code == errors.InvalidSignature.exit_code, changed


def test_conversion_changes_the_signed_bytes(qcow2, tmp_path):
    """What Glance's image_conversion and Nova's force_raw_images do: the raw file is not what was signed."""
    props, _ = sign_and_verify(qcow2, tmp_path)
    raw = tmp_path / "disk.raw"
    qemu("qemu-img", "convert", "-f", "qcow2", "-O", "raw", qcow2, raw)
    result = run_cli("verify", raw, "--properties", props, "--cert", cert_of("RSA-PSS"))
    assert result.code == errors.InvalidSignature.exit_code, result
    _, raw_verified = sign_and_verify(raw, tmp_path)  # a sparse 1 GiB raw file streams fine
    assert raw_verified.code == 0, raw_verified


def test_progress_bar_only_on_a_terminal(tmp_path):
    image = tmp_path / "big.raw"
    qemu("qemu-img", "create", "-q", "-f", "raw", image, "96M")
    args = [sys.executable, "-m", "imgsign", "sign", str(image), "--key", str(key_of("ECC_SECP384R1")),
            "--cert-uuid", CERT_UUID]

    def run(extra: list[str]) -> tuple[int, bytes]:
        controller, terminal = pty.openpty()
        proc = subprocess.Popen(args + extra, stdout=subprocess.PIPE, stderr=terminal, stdin=subprocess.DEVNULL)
        os.close(terminal)
        seen = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        out, _ = proc.communicate(timeout=120)
        os.close(controller)
        assert json.loads(out)["img_signature_key_type"] == "ECC_SECP384R1"
        return proc.returncode, seen

    code, stderr = run([])
    assert code == 0 and b"signing" in stderr and b"%" in stderr
    code, stderr = run(["--quiet"])
    assert code == 0 and stderr == b""
    piped = run_cli("sign", image, "--key", key_of("ECC_SECP384R1"), "--cert-uuid", CERT_UUID)
    assert piped.code == 0 and piped.stderr == ""
