"""Memory stays flat: no whole-image buffer is ever held (tracemalloc, not timing)."""

from __future__ import annotations

import io
import tracemalloc

import pytest

from imgsign import Signer, Verifier, VerifyingReader, load_certificate, load_private_key, sign, verifying_iter
from imgsign.stream import CHUNK_SIZE
from tests.conftest import CERT_UUID, cert_of, key_of

MIB = 1024 * 1024
IMAGE_SIZE = 128 * MIB  # far larger than one chunk
#: imgsign's one read buffer, one 1 MiB chunk of the caller's, 1 MiB of slack; the whole image is 40x this.
BUDGET = CHUNK_SIZE + 2 * MIB


@pytest.fixture(scope="module")
def big_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "big.img"
    with open(path, "wb") as handle:  # sparse: cheap to make, reads like any file
        handle.truncate(IMAGE_SIZE)
        handle.seek(IMAGE_SIZE // 2)
        handle.write(b"data in the middle")
    return path


@pytest.fixture(scope="module")
def key_and_cert():
    return load_private_key(key_of("ECC_SECP384R1").read_bytes()), load_certificate(cert_of("ECC_SECP384R1").read_bytes())


def peak_of(func) -> int:
    """Peak bytes allocated by ``func``'s second run (the first one pays for lazy imports)."""
    func()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        func()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_sign_and_verify_file_stay_within_one_chunk(big_image, key_and_cert):
    key, cert = key_and_cert
    result = {}

    def do_sign():
        with open(big_image, "rb") as handle:
            result["props"] = sign(handle, key, CERT_UUID)

    def do_verify():
        with open(big_image, "rb") as handle:
            Verifier.for_certificate(result["props"], cert).verify_data(handle)

    sign_peak = peak_of(do_sign)
    verify_peak = peak_of(do_verify)
    assert big_image.stat().st_size >= 16 * CHUNK_SIZE
    assert sign_peak < BUDGET, f"signing held {sign_peak} bytes for a {IMAGE_SIZE}-byte image"
    assert verify_peak < BUDGET, f"verifying held {verify_peak} bytes for a {IMAGE_SIZE}-byte image"


def test_streaming_wrappers_stay_flat(big_image, key_and_cert):
    key, cert = key_and_cert
    with open(big_image, "rb") as handle:
        props = Signer(key, CERT_UUID).sign(handle)

    def through_reader():
        with open(big_image, "rb") as raw, VerifyingReader(raw, Verifier.for_certificate(props, cert)) as reader:
            buffer = bytearray(1024 * 1024)
            while reader.readinto(buffer):
                pass
            assert reader.verified

    def through_iter():
        def chunks():
            with open(big_image, "rb") as raw:
                while chunk := raw.read(1024 * 1024):
                    yield chunk

        for _ in verifying_iter(chunks(), Verifier.for_certificate(props, cert)):
            pass

    assert peak_of(through_reader) < BUDGET
    assert peak_of(through_iter) < BUDGET


def test_a_whole_file_buffer_would_be_caught(big_image):
    """The measurement is real: reading the image at once exceeds the budget."""
    assert peak_of(lambda: big_image.read_bytes()) > BUDGET
