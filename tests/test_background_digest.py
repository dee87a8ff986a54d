"""Hashing on a second core while the command does its data-free work (stream.BackgroundDigest)."""

from __future__ import annotations

import hashlib
import io
import os
import sys
import threading

import pytest

from imgsign.algorithms import HashMethod
from imgsign.stream import CHUNK_SIZE, BackgroundDigest
from tests.conftest import CERT_UUID, cert_of, key_of, run_cli


class _SlowSource(io.RawIOBase):
    """A readable stream that blocks on every read until the test lets it go on."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.gate = threading.Event()
        self.reads = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        self.gate.wait(5)
        self.reads += 1
        return self._data.readinto(buffer)


@pytest.mark.parametrize("method", list(HashMethod))
def test_digest_matches_hashlib(method: HashMethod) -> None:
    data = os.urandom(3 * CHUNK_SIZE + 12345)
    seen: list[int] = []
    digest = BackgroundDigest(io.BytesIO(data), method, seen.append)
    assert digest.result() == hashlib.new(method.openssl_name, data).digest()
    assert sum(seen) == len(data)


def test_read_error_is_raised_in_the_callers_thread() -> None:
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
            raise OSError(5, "Input/output error")

    digest = BackgroundDigest(Broken(), HashMethod.SHA256)
    with pytest.raises(OSError, match="Input/output error"):
        digest.result()


def test_cancel_stops_reading_and_restores_the_switch_interval() -> None:
    before = sys.getswitchinterval()
    source = _SlowSource(os.urandom(8 * CHUNK_SIZE))
    digest = BackgroundDigest(source, HashMethod.SHA256)
    assert sys.getswitchinterval() < before  # lowered while both threads run
    source.gate.set()
    digest.cancel()
    assert sys.getswitchinterval() == before
    assert source.reads < 9  # it stopped after the chunk in hand, not at the end of the data
    with pytest.raises(RuntimeError, match="cancelled"):
        digest.result()


def test_sign_reports_a_bad_key_before_a_missing_image(tmp_path: object) -> None:
    """Hashing starts first, but errors keep the order of a one-pass run: key, then image."""
    bad_key = os.path.join(str(tmp_path), "bad.key")
    with open(bad_key, "wb") as handle:
        handle.write(b"not a key")
    result = run_cli("sign", os.path.join(str(tmp_path), "missing.img"), "--key", bad_key, "--cert-uuid", CERT_UUID)
    assert result.code == 14, result
    result = run_cli("sign", os.path.join(str(tmp_path), "missing.img"), "--key", key_of("RSA-PSS"),
                     "--cert-uuid", CERT_UUID)
    assert result.code == 10 and "missing.img" in result.stderr, result


def test_verify_of_a_directory_is_an_input_error(tmp_path: object) -> None:
    props = os.path.join(str(tmp_path), "p.json")
    image = os.path.join(str(tmp_path), "image")
    with open(image, "wb") as handle:
        handle.write(os.urandom(1000))
    signed = run_cli("sign", image, "--key", key_of("RSA-PSS"), "--cert-uuid", CERT_UUID, "-o", props)
    assert signed.code == 0, signed
    result = run_cli("verify", str(tmp_path), "--properties", props, "--cert", cert_of("RSA-PSS"))
    assert result.code == 10 and "is a directory" in result.stderr, result


def test_library_sign_and_verify_accept_the_whole_image_as_bytes() -> None:
    """``sign(b"...")`` used to iterate the bytes as integers and end in a TypeError."""
    import imgsign
    from tests.conftest import cert_of

    key = imgsign.load_private_key(key_of("RSA-PSS").read_bytes())
    cert = imgsign.load_certificate(cert_of("RSA-PSS").read_bytes())
    data = os.urandom(CHUNK_SIZE + 7)
    props = imgsign.sign(data, key, CERT_UUID, certificate=cert)
    imgsign.Verifier.for_certificate(props, cert).verify_data(bytearray(data))
    with pytest.raises(imgsign.ImgsignError):
        imgsign.Verifier.for_certificate(props, cert).verify_data(memoryview(data)[1:])


def test_chain_options_without_trust_are_a_usage_error(tmp_path: object) -> None:
    image = os.path.join(str(tmp_path), "image")
    props = os.path.join(str(tmp_path), "p.json")
    with open(image, "wb") as handle:
        handle.write(os.urandom(1000))
    assert run_cli("sign", image, "--key", key_of("RSA-PSS"), "--cert-uuid", CERT_UUID, "-o", props).code == 0
    result = run_cli("verify", image, "--properties", props, "--cert", cert_of("RSA-PSS"), "--require-crl")
    assert result.code == 2 and "need --trusted" in result.stderr, result


def test_iter_fd_chunks_reads_at_an_offset_without_moving_the_position_and_reads_pipes(tmp_path: object) -> None:
    from imgsign.stream import iter_fd_chunks

    data = os.urandom(2 * CHUNK_SIZE + 99)
    path = os.path.join(str(tmp_path), "data")
    with open(path, "wb") as handle:
        handle.write(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 5, os.SEEK_SET)
        assert b"".join(bytes(c) for c in iter_fd_chunks(fd)) == data
        assert b"".join(bytes(c) for c in iter_fd_chunks(fd, offset=CHUNK_SIZE)) == data[CHUNK_SIZE:]
        assert os.lseek(fd, 0, os.SEEK_CUR) == 5
    finally:
        os.close(fd)
    read_end, write_end = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(write_end, data[:70000]), os.close(write_end)))
    writer.start()
    try:
        assert b"".join(bytes(c) for c in iter_fd_chunks(read_end, offset=None)) == data[:70000]
    finally:
        writer.join()
        os.close(read_end)
