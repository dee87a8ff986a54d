"""The raw-digest statement for qcow2 images: qemu-img's raw output, the streamed digest, sign and verify.

Real qcow2 images made with qemu-img/qemu-io; nothing stands in for qemu.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from imgsign import HashMethod, Signer, errors, load_certificate, load_private_key
from imgsign._internal import raw_digest
from imgsign.certificates import certificate_public_key
from imgsign.raw_statement import (
    IMAGE_DIGEST, NAMES, RAW_SHA256, RAW_SIZE, SIGNATURE, RawStatement, make_raw_statement, parse_raw_statement,
    statement_message, verify_raw_statement,
)
from tests.conftest import CERT_UUID, cert_of, key_of

MIB = 1024 * 1024
#: Virtual size: not a multiple of 64 KiB or 2 MiB, so the last cluster is partial.
VIRTUAL = 48 * MIB + 3 * 512


def qemu_img(*args: object) -> None:
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True)


def qemu_io(image: Path, *commands: str) -> None:
    args = ["qemu-io", "-f", "qcow2"]
    for command in commands:
        args += ["-c", command]
    subprocess.run([*args, str(image)], check=True, capture_output=True)


def sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def make_qcow2(path: Path, cluster_size: str = "64k") -> Path:
    """Data, explicit zeros over data, an unaligned write at the very end, and holes in between."""
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"cluster_size={cluster_size}", path, VIRTUAL)
    qemu_io(path, "write -P 0x5a 0 3M", "write -P 0xa5 5M 1M", "write -z 5M 64k", "write -P 0x11 20000k 7k",
            f"write -P 0x77 {VIRTUAL - 1536} 1536")
    return path


@pytest.fixture(scope="module")
def qcow2(tmp_path_factory) -> Path:
    return make_qcow2(tmp_path_factory.mktemp("raw") / "disk.qcow2")


def supports_direct_io(directory: Path) -> bool:
    try:
        fd = os.open(directory / ".direct-io-probe", os.O_CREAT | os.O_WRONLY | os.O_DIRECT, 0o600)
    except OSError:
        return False
    os.close(fd)
    (directory / ".direct-io-probe").unlink()
    return True


def convert_raw(source: Path, destination: Path, *options: str) -> str:
    qemu_img("convert", *options, "-f", "qcow2", "-O", "raw", source, destination)
    digest = sha256_file(destination)
    destination.unlink()
    return digest


def streamed(path: Path) -> raw_digest.RawDigest:
    fd = os.open(path, os.O_RDONLY)
    try:
        return raw_digest.raw_digest(fd, str(path))
    finally:
        os.close(fd)


# --- the evidence: qemu-img's raw output does not depend on how Nova converts or how the qcow2 was made ---

def test_qemu_img_raw_output_is_the_same_for_every_conversion_and_layout(tmp_path: Path, qcow2: Path) -> None:
    reference = convert_raw(qcow2, tmp_path / "ref.raw")
    sources = {"64k": qcow2}
    for cluster in ("512", "2M"):
        sources[cluster] = tmp_path / f"c{cluster}.qcow2"
        qemu_img("convert", "-f", "qcow2", "-O", "qcow2", "-o", f"cluster_size={cluster}", qcow2, sources[cluster])
    sources["compressed"] = tmp_path / "compressed.qcow2"
    qemu_img("convert", "-c", "-f", "qcow2", "-O", "qcow2", qcow2, sources["compressed"])
    assert len({sha256_file(p) for p in sources.values()}) == len(sources)  # really different files
    variants: list[tuple[str, ...]] = [("-t", "writeback"), ("-S", "0"), ()]
    if supports_direct_io(tmp_path):  # Nova, too, uses -t none only where O_DIRECT works (not on tmpfs)
        variants.append(("-t", "none"))
    results = {}
    for name, source in sources.items():
        for options in variants:
            results[(name, options)] = convert_raw(source, tmp_path / "out.raw", *options)
        assert streamed(source) == raw_digest.RawDigest(bytes.fromhex(reference), VIRTUAL), name
    assert set(results.values()) == {reference}, results


def test_streamed_digest_is_the_digest_of_qemu_img_convert_output(tmp_path: Path, qcow2: Path) -> None:
    qemu_img("convert", "-f", "qcow2", "-O", "raw", qcow2, tmp_path / "out.raw")
    assert os.path.getsize(tmp_path / "out.raw") == VIRTUAL
    result = streamed(qcow2)
    assert result.sha256.hex() == sha256_file(tmp_path / "out.raw")
    assert result.size == VIRTUAL


def test_streamed_digest_reads_the_open_descriptor_not_the_path(tmp_path: Path, qcow2: Path) -> None:
    path = tmp_path / "moving.qcow2"
    shutil.copy(qcow2, path)
    fd = os.open(path, os.O_RDONLY)
    try:
        other = make_qcow2(tmp_path / "other.qcow2")
        qemu_io(other, "write -P 0x42 1M 1M")
        os.replace(other, path)  # the name now points to another image
        assert raw_digest.raw_digest(fd, str(path)) == streamed(qcow2)
    finally:
        os.close(fd)


def test_backing_file_and_data_file_are_refused(tmp_path: Path, qcow2: Path) -> None:
    overlay = tmp_path / "overlay.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", qcow2, "-F", "qcow2", overlay)
    with pytest.raises(errors.UnsafeImage, match="backing file"):
        streamed(overlay)
    external = tmp_path / "external.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={tmp_path / 'external.data'}", external, "1M")
    with pytest.raises(errors.UnsafeImage, match="external data file"):
        streamed(external)


def test_a_broken_qcow2_is_an_input_error(tmp_path: Path, qcow2: Path) -> None:
    broken = tmp_path / "broken.qcow2"
    data = bytearray(qcow2.read_bytes())
    data[40:48] = (12345).to_bytes(8, "big")  # l1_table_offset not cluster-aligned: qemu refuses to open it
    broken.write_bytes(bytes(data))
    with pytest.raises(errors.InputError, match="cannot convert image"):
        streamed(broken)


# --- the statement, library ---

def _sign(key_type: str, image_digest: bytes, hash_method: HashMethod = HashMethod.SHA256, key=None):
    key = key or load_private_key(key_of(key_type).read_bytes())
    signed = Signer(key, CERT_UUID, hash_method).sign_digest(image_digest)
    return key, signed


def _statement_properties(key_type: str, image: bytes, raw: bytes, hash_method=HashMethod.SHA256, key=None):
    digest = hashlib.new(hash_method.openssl_name, image).digest()
    key, signed = _sign(key_type, digest, hash_method, key)
    statement = make_raw_statement(key, signed, digest, hashlib.sha256(raw).digest(), len(raw))
    return {**signed.as_dict(), **statement.as_dict()}


def _public(key_type: str):
    return certificate_public_key(load_certificate(cert_of(key_type).read_bytes()))


@pytest.mark.parametrize("key_type", ["RSA-PSS", "ECC_SECP384R1"])
@pytest.mark.parametrize("hash_method", [HashMethod.SHA256, HashMethod.SHA512])
def test_statement_round_trip(key_type: str, hash_method: HashMethod) -> None:
    properties = _statement_properties(key_type, b"qcow2 bytes", b"raw bytes" * 1000, hash_method)
    statement = verify_raw_statement(properties, _public(key_type))
    assert statement.raw_sha256 == hashlib.sha256(b"raw bytes" * 1000).digest()
    assert statement.raw_size == 9000
    assert statement.image_digest == hashlib.new(hash_method.openssl_name, b"qcow2 bytes").digest()
    assert set(properties) - set(NAMES) == {"img_signature", "img_signature_hash_method", "img_signature_key_type",
                                            "img_signature_certificate_uuid"}


def test_canonical_message() -> None:
    _, signed = _sign("RSA-PSS", bytes(32))
    assert statement_message(signed, bytes(32), b"\x01" * 32, 4096) == (
        b"imgsign raw statement v1\nhash_method=SHA-256\nkey_type=RSA-PSS\n"
        b"certificate_uuid=" + CERT_UUID.encode() + b"\nimage_digest=" + b"00" * 32 + b"\nraw_sha256="
        + b"01" * 32 + b"\nraw_size=4096\n"
    )


def test_the_statement_signature_is_no_image_signature() -> None:
    """Domain separation: the statement signature does not verify as img_signature over its own message."""
    properties = _statement_properties("RSA-PSS", b"qcow2", b"raw")
    parsed = parse_raw_statement(properties)
    assert parsed is not None
    from imgsign import SignatureProperties
    signed = SignatureProperties.from_mapping(properties)
    message = statement_message(signed, parsed.image_digest, parsed.raw_sha256, parsed.raw_size)
    with pytest.raises(errors.InvalidSignature):
        _public("RSA-PSS").verify_digest(parsed.signature, hashlib.sha256(message).digest(), HashMethod.SHA256)


def test_statement_moved_to_another_image_is_refused() -> None:
    first = _statement_properties("RSA-PSS", b"image one", b"raw one")
    second = _statement_properties("RSA-PSS", b"image two", b"raw two")
    moved = {**second, **{name: first[name] for name in NAMES}}
    with pytest.raises(errors.RawStatementError, match="belongs to another image"):
        verify_raw_statement(moved, _public("RSA-PSS"))


def _flip_hex(value: str) -> str:
    return ("1" if value[0] != "1" else "2") + value[1:]


@pytest.mark.parametrize("field", [IMAGE_DIGEST, RAW_SHA256, RAW_SIZE, SIGNATURE, "img_signature_certificate_uuid"])
def test_each_tampered_field_is_refused(field: str) -> None:
    properties = _statement_properties("ECC_SECP384R1", b"image", b"raw")
    if field == RAW_SIZE:
        properties[field] = str(int(properties[field]) + 512)
    elif field == SIGNATURE:
        good = _statement_properties("ECC_SECP384R1", b"image", b"other raw")
        properties[field] = good[SIGNATURE]  # a well-formed signature by the right key, over another message
    elif field == "img_signature_certificate_uuid":
        properties[field] = "another-certificate-id"
    else:
        properties[field] = _flip_hex(properties[field])
    with pytest.raises(errors.RawStatementError, match="does not verify"):
        verify_raw_statement(properties, _public("ECC_SECP384R1"))


def test_hash_method_changed_is_refused() -> None:
    properties = _statement_properties("RSA-PSS", b"image", b"raw")
    properties["img_signature_hash_method"] = "SHA-384"
    with pytest.raises(errors.RawStatementError, match="belongs to another signature"):
        verify_raw_statement(properties, _public("RSA-PSS"))


def test_statement_signed_by_another_key_is_refused() -> None:
    other = load_private_key(rsa.generate_private_key(public_exponent=65537, key_size=3072).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    properties = _statement_properties("RSA-PSS", b"image", b"raw")
    forged = _statement_properties("RSA-PSS", b"image", b"evil raw", key=other)
    properties.update({RAW_SHA256: forged[RAW_SHA256], SIGNATURE: forged[SIGNATURE]})
    with pytest.raises(errors.RawStatementError, match="does not verify with the certificate's key"):
        verify_raw_statement(properties, _public("RSA-PSS"))


def test_malformed_statement_signature_and_missing_statement() -> None:
    properties = _statement_properties("ECC_SECP384R1", b"image", b"raw")
    without = {k: v for k, v in properties.items() if k not in NAMES}
    with pytest.raises(errors.RawStatementError, match="no raw-digest statement"):
        verify_raw_statement(without, _public("ECC_SECP384R1"))
    properties[SIGNATURE] = "AAAA"
    with pytest.raises(errors.MalformedSignature):
        verify_raw_statement(properties, _public("ECC_SECP384R1"))


def test_no_statement_about_an_image_the_key_did_not_sign() -> None:
    key, signed = _sign("RSA-PSS", hashlib.sha256(b"image").digest())
    with pytest.raises(errors.InvalidSignature):
        make_raw_statement(key, signed, hashlib.sha256(b"other").digest(), bytes(32), 0)


@pytest.mark.parametrize(("field", "value", "message"), [
    (RAW_SIZE, "012", "leading zeros"),
    (RAW_SIZE, "-1", "decimal byte count"),
    (RAW_SIZE, "9223372036854775808", "at most"),
    (RAW_SHA256, "AB" * 32, "lower-case hexadecimal"),
    (RAW_SHA256, "ab" * 31, "must be 32 bytes"),
    (IMAGE_DIGEST, "ab" * 20, "not the size of any hash method"),
    (IMAGE_DIGEST, "abc", "even number"),
    (SIGNATURE, "a-b_", "URL-safe"),
    (SIGNATURE, "", "missing or empty"),
])
def test_parse_is_strict(field: str, value: str, message: str) -> None:
    properties = _statement_properties("RSA-PSS", b"image", b"raw")
    properties[field] = value
    with pytest.raises(errors.PropertiesError, match=message):
        parse_raw_statement(properties)


def test_parse_partial_and_absent() -> None:
    assert parse_raw_statement({"img_signature": "x"}) is None
    with pytest.raises(errors.PropertiesError, match="incomplete raw statement"):
        parse_raw_statement({RAW_SIZE: "1"})
    with pytest.raises(errors.PropertiesError, match="must be a string"):
        parse_raw_statement({name: 1 for name in NAMES})
    assert isinstance(parse_raw_statement(_statement_properties("RSA-PSS", b"i", b"r")), RawStatement)


# --- the command line ---

def _sign_cli(cli, image: Path, *extra: object):
    return cli("sign", image, "--key", key_of("RSA-PSS"), "--cert-uuid", CERT_UUID, "-q", *extra)


def test_cli_sign_qcow2_emits_a_verifiable_statement(cli, tmp_path: Path, qcow2: Path) -> None:
    result = _sign_cli(cli, qcow2)
    assert result.code == 0, result
    properties = result.json()
    statement = verify_raw_statement(properties, _public("RSA-PSS"))
    assert statement.raw_sha256.hex() == convert_raw(qcow2, tmp_path / "out.raw")
    assert statement.raw_size == VIRTUAL
    assert statement.image_digest == hashlib.sha256(qcow2.read_bytes()).digest()
    # verify (like cursive and Glance) ignores the extra properties
    (tmp_path / "p.json").write_text(json.dumps(properties))
    verified = cli("verify", qcow2, "--properties", tmp_path / "p.json", "--cert", cert_of("RSA-PSS"))
    assert verified.code == 0, verified


def test_cli_formats_carry_the_statement(cli, qcow2: Path) -> None:
    openstack = _sign_cli(cli, qcow2, "--format", "openstack")
    assert openstack.code == 0, openstack
    assert f"--property {RAW_SHA256}=" in openstack.stdout and f"{SIGNATURE}=" in openstack.stdout
    env = _sign_cli(cli, qcow2, "--format", "env")
    assert env.code == 0, env
    assert f"{RAW_SIZE.upper()}={VIRTUAL}\n" in env.stdout


def test_cli_raw_image_and_no_raw_digest_get_no_statement(cli, tmp_path: Path, qcow2: Path) -> None:
    raw = tmp_path / "disk.raw"
    qemu_img("convert", "-f", "qcow2", "-O", "raw", qcow2, raw)
    for image, extra in ((raw, ()), (qcow2, ("--no-raw-digest",))):
        result = _sign_cli(cli, image, *extra)
        assert result.code == 0, result
        assert set(result.json()) == {"img_signature", "img_signature_hash_method", "img_signature_key_type",
                                      "img_signature_certificate_uuid"}


def test_cli_missing_nbdcopy_names_the_package(cli, tmp_path: Path, qcow2: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(shutil.which("qemu-nbd"), bin_dir / "qemu-nbd")
    result = cli("sign", qcow2, "--key", key_of("RSA-PSS"), "--cert-uuid", CERT_UUID, "-q", env={"PATH": str(bin_dir)})
    assert result.code == 40, result
    assert "nbdcopy is not installed (Debian package libnbd-bin)" in result.stderr
    assert "--no-raw-digest" in result.stderr


def test_cli_backing_file_is_refused(cli, tmp_path: Path, qcow2: Path) -> None:
    overlay = tmp_path / "overlay.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", qcow2, "-F", "qcow2", overlay)
    result = _sign_cli(cli, overlay)
    assert result.code == 62, result
    assert "backing file" in result.stderr


def test_cli_image_from_a_pipe(cli, tmp_path: Path, qcow2: Path) -> None:
    """A raw image streamed from a pipe signs as before (its format is told from the bytes the
    signing read); a qcow2 from a pipe cannot be read again for its raw digest: a clear error,
    unless --no-raw-digest."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    qcow2_bytes = qcow2.read_bytes()

    def feed(data: bytes) -> None:
        with open(fifo, "wb") as handle:
            handle.write(data)

    cases = ((b"x" * 100_000, (), 0), (qcow2_bytes, (), 10), (qcow2_bytes, ("--no-raw-digest",), 0))
    for data, extra, code in cases:
        writer = threading.Thread(target=feed, args=(data,), daemon=True)
        writer.start()
        result = _sign_cli(cli, fifo, *extra)
        writer.join(timeout=30)
        assert result.code == code, result
        assert ("cannot be read again from its start" in result.stderr) == (code == 10), result
        if code == 0:
            assert not any(k.startswith("imgsign_raw_v1_") for k in json.loads(result.stdout)), result
