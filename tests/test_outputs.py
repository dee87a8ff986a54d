"""Outputs never destroy data: `sign -o` and `keygen --out-*` refuse inputs, keep devices and links."""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading

import pytest

from imgsign import errors
from tests.conftest import CERT_UUID, cert_of, key_of, pki, run_cli


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(256 * 1024 + 7))
    return path


@pytest.fixture
def key(tmp_path):
    """A private copy of the RSA-PSS leaf key (tests may try to overwrite it)."""
    path = tmp_path / "signer.key"
    shutil.copy(key_of("RSA-PSS"), path)
    return path


def sign(image, key, *extra):
    return run_cli("sign", image, "--key", key, "--cert-uuid", CERT_UUID, *extra)


@pytest.mark.parametrize("force", [(), ("--force",)])
def test_sign_refuses_to_write_over_its_key(image, key, force):
    before = key.read_bytes()
    result = sign(image, key, "-o", key, *force)
    assert result.code == errors.InputError.exit_code, result
    assert "same file as the private key" in result.stderr
    assert key.read_bytes() == before


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_sign_refuses_the_image_under_another_name(image, key, tmp_path, link):
    before = image.read_bytes()
    other = tmp_path / "other-name.json"
    (os.symlink if link == "symlink" else os.link)(image, other)
    for force in ((), ("--force",)):
        result = sign(image, key, "-o", other, *force)
        assert result.code == errors.InputError.exit_code and "same file as the image" in result.stderr, result
    assert image.read_bytes() == before


def test_sign_refuses_certificate_and_passphrase_file(image, tmp_path):
    cert = tmp_path / "c.pem"
    shutil.copy(cert_of("RSA-PSS"), cert)
    result = run_cli("sign", image, "--key", key_of("RSA-PSS"), "--cert", cert, "--cert-uuid", CERT_UUID,
                     "-o", cert)
    assert result.code == errors.InputError.exit_code and "same file as the certificate" in result.stderr, result
    encrypted = tmp_path / "k.pem"
    shutil.copy(pki("leaf-rsa-pss-encrypted.key"), encrypted)
    passphrase = tmp_path / "pass"
    shutil.copy(pki("leaf-rsa-pss-encrypted.passphrase"), passphrase)
    result = sign(image, encrypted, "--passphrase-file", passphrase, "-o", passphrase)
    assert result.code == errors.InputError.exit_code and "passphrase file" in result.stderr, result
    assert passphrase.read_bytes() == pki("leaf-rsa-pss-encrypted.passphrase").read_bytes()


def test_sign_replaces_an_existing_file_only_with_force(image, key, tmp_path):
    out = tmp_path / "props.json"
    out.write_text("keep me")
    result = sign(image, key, "-o", out)
    assert result.code == errors.InputError.exit_code and "--force" in result.stderr, result
    assert out.read_text() == "keep me"
    assert sign(image, key, "-o", out, "--force").code == 0
    assert json.loads(out.read_text())["img_signature_key_type"] == "RSA-PSS"


def test_sign_writes_through_a_symlink_to_its_target(image, key, tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    assert sign(image, key, "-o", link, "--force").code == 0
    assert link.is_symlink() and json.loads(target.read_text())["img_signature_key_type"] == "RSA-PSS"


def test_sign_writes_into_a_fifo_instead_of_replacing_it(image, key, tmp_path):
    fifo = tmp_path / "props.fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    result = sign(image, key, "-o", fifo)
    if not received:  # a failed run never opened the FIFO: release the reader
        with open(fifo, "wb"):
            pass
    reader.join(timeout=30)
    assert result.code == 0, result
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert json.loads(received[0])["img_signature_key_type"] == "RSA-PSS"


def test_sign_to_a_link_to_dev_stdout_writes_to_stdout(image, key, tmp_path):
    link = tmp_path / "stdout"
    link.symlink_to("/dev/stdout")  # a pipe here (run_cli captures stdout): written into, not replaced
    result = sign(image, key, "-o", link)
    assert result.code == 0, result
    assert link.is_symlink() and os.readlink(link) == "/dev/stdout"
    assert json.loads(result.stdout)["img_signature_key_type"] == "RSA-PSS"


def _keygen(tmp_path, out_key, out_cert, *extra):
    ca_key, ca_cert = tmp_path / "ca.key", tmp_path / "ca.pem"
    shutil.copy(pki("intermediate-ca.key"), ca_key)
    shutil.copy(pki("intermediate-ca.pem"), ca_cert)
    result = run_cli("keygen", "--no-encrypt", "--key-type", "ECC_SECP384R1", "--out-key", out_key, "--out-cert", out_cert,
                     "--ca-cert", ca_cert, "--ca-key", ca_key, *extra)
    return result, ca_key, ca_cert


@pytest.mark.parametrize("which", ["key", "cert"])
def test_keygen_refuses_to_overwrite_the_ca(tmp_path, which):
    ca = tmp_path / ("ca.key" if which == "key" else "ca.pem")
    result, ca_key, ca_cert = _keygen(tmp_path, ca if which == "key" else tmp_path / "k.pem",
                                      ca if which == "cert" else tmp_path / "c.pem", "--force")
    assert result.code == errors.InputError.exit_code and "same file as the CA" in result.stderr, result
    assert ca_key.read_bytes() == pki("intermediate-ca.key").read_bytes()
    assert ca_cert.read_bytes() == pki("intermediate-ca.pem").read_bytes()
    assert not (tmp_path / "k.pem").exists() and not (tmp_path / "c.pem").exists()


def test_keygen_refuses_one_file_for_key_and_certificate(tmp_path):
    link = tmp_path / "also-k.pem"
    link.symlink_to(tmp_path / "k.pem")
    for out_cert in (tmp_path / "k.pem", link):
        result = run_cli("keygen", "--no-encrypt", "--key-type", "ECC_SECP384R1", "--out-key", tmp_path / "k.pem",
                         "--out-cert", out_cert)
        assert result.code == errors.InputError.exit_code and "same file" in result.stderr, result
        assert not (tmp_path / "k.pem").exists()


def test_keygen_refuses_an_empty_passphrase(tmp_path):
    empty = tmp_path / "pass"
    empty.write_text("\n")
    result = run_cli("keygen", "--key-type", "ECC_SECP384R1", "--out-key", tmp_path / "k.pem",
                     "--out-cert", tmp_path / "c.pem", "--passphrase-file", empty)
    assert result.code == errors.InputError.exit_code and "empty passphrase" in result.stderr, result
    assert not (tmp_path / "k.pem").exists()


def test_an_output_that_appears_after_the_check_is_not_replaced(tmp_path):
    """The check runs before the work; a file created meanwhile is still never overwritten without --force."""
    from imgsign._internal.files import plan_outputs

    out = tmp_path / "props.json"
    (planned,) = plan_outputs([(str(out), "output", 0o644)], [], force=False)
    out.write_text("written by someone else meanwhile")
    with pytest.raises(errors.InputError, match="--force"):
        planned.write(b"new")
    assert out.read_text() == "written by someone else meanwhile"
    assert [p.name for p in tmp_path.iterdir()] == ["props.json"]  # no temporary file left
    (forced,) = plan_outputs([(str(out), "output", 0o644)], [], force=True)
    forced.write(b"new")
    assert out.read_bytes() == b"new"


def test_sign_refuses_to_write_over_its_configuration_file(image, key, tmp_path):
    conf = tmp_path / "imgsign.conf"
    conf.write_text(f"[imgsign_embedded]\npath = {tmp_path / 'ks.sqlite3'}\n")
    before = conf.read_text()
    result = run_cli("-c", conf, "sign", image, "--key", key, "--cert-uuid", CERT_UUID, "-o", conf, "--force")
    assert result.code == errors.InputError.exit_code and "configuration file" in result.stderr, result
    assert conf.read_text() == before


def test_an_output_that_became_a_link_to_an_input_after_the_check_is_refused(tmp_path):
    """Even with --force, the identity check is made again when writing: an output name that was
    turned into a link to the private key after the check does not replace the key."""
    from imgsign._internal.files import plan_outputs

    key_file = tmp_path / "signer.key"
    key_file.write_bytes(b"-----BEGIN PRIVATE KEY-----\nsecret\n")
    out = tmp_path / "props.json"
    out.write_text("old")
    (planned,) = plan_outputs([(str(out), "output", 0o644)], [(str(key_file), "private key")], force=True)
    out.unlink()
    out.symlink_to(key_file)
    with pytest.raises(errors.InputError, match="same file as the private key"):
        planned.write(b"new")
    assert key_file.read_bytes() == b"-----BEGIN PRIVATE KEY-----\nsecret\n"
