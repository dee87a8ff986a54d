"""Signing with each key backend in one run: a key file, a PKCS#11 token (SoftHSM2), ...

Usage::

    python benchmarks/signing_backends.py                       # 1 GiB, RSA-PSS 3072, SHA-256
    python benchmarks/signing_backends.py --size 256M --key-type ECC_SECP384R1 --signatures 200 --json out.json

For every backend in :data:`BACKENDS` it makes a key of ``--key-type`` (in a private
temporary folder; the token is a fresh SoftHSM2 token there), then times, in an order
rotated every round: signing the whole test file through the library (local hashing,
streamed, then one signature: what ``imgsign sign`` does), and ``--signatures`` signatures
of one digest, whose median is the backend's fixed cost per signature (the token or
service round trip plus imgsign's local check of every signature).  It prints a
markdown table.  A backend that cannot run here (SoftHSM2 not installed, no server) is
listed as skipped with the reason.

To add a backend, append a :class:`Backend` to :data:`BACKENDS`: a name and a ``prepare``
function that makes a key in the work folder and returns the ``--key`` reference
(a file name or a URI), or raises :class:`Skip`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from imgsign.algorithms import HashMethod, KeyType
from imgsign.keys import PrivateKey
from imgsign.keys.loading import open_signing_key
from imgsign.signer import Signer

MIB = 1024 * 1024
CERT_UUID = "3f1d6c1e-8f7a-4a55-9d2b-4c1b0e6b7a10"
SOFTHSM_MODULES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")


class Skip(Exception):
    """This backend cannot run on this machine (the message says why)."""


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str
    #: (work folder, key type, RSA/DSA bits) -> the key's reference for ``open_signing_key``.
    prepare: Callable[[Path, KeyType, int | None], str]


def prepare_file(work: Path, key_type: KeyType, bits: int | None) -> str:
    from imgsign import keygen

    path = work / "key.pem"
    path.write_bytes(keygen.generate(key_type, bits=bits).key_pem)
    path.chmod(0o600)
    return str(path)


def prepare_softhsm(work: Path, key_type: KeyType, bits: int | None) -> str:
    from imgsign.keys.loading import generate_signing_key

    module = next((m for m in SOFTHSM_MODULES if os.path.isfile(m)), None)
    if module is None or shutil.which("softhsm2-util") is None:
        raise Skip("SoftHSM2 is not installed (apt-get install softhsm2)")
    tokens = work / "tokens"
    tokens.mkdir()
    conf = work / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)  # read when the module initialises, in this process
    pin = work / "pin"
    pin.write_text("bench-pin\n")
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "bench", "--pin", "bench-pin",  # noqa: S607
                    "--so-pin", "bench-so-pin"], check=True, capture_output=True)
    reference = f"pkcs11:token=bench;object=signer?module-path={module}&pin-source=file:{pin}"
    generate_signing_key(reference, key_type, bits)
    return reference


#: Every backend the benchmark runs, in table order (another one: append it here).
BACKENDS: list[Backend] = [
    Backend("key file (in-process)", prepare_file),
    Backend("PKCS#11 SoftHSM2", prepare_softhsm),
]


def parse_size(text: str) -> int:
    units = {"K": 1024, "M": MIB, "G": 1024 * MIB}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


def make_file(path: Path, size: int) -> None:
    block = os.urandom(16 * MIB)
    with open(path, "wb") as handle:
        for offset in range(0, size, len(block)):
            handle.write(block[: min(len(block), size - offset)])
    with open(path, "rb") as handle:  # into the page cache
        while handle.read(16 * MIB):
            pass


def sign_file(key: PrivateKey, path: Path, method: HashMethod) -> float:
    start = time.perf_counter()
    with open(path, "rb") as handle:
        Signer(key, CERT_UUID, method).sign(handle)
    return time.perf_counter() - start


def fixed_cost(key: PrivateKey, method: HashMethod, count: int) -> list[float]:
    digest = method.new().digest()
    times = []
    for _ in range(count):
        start = time.perf_counter()
        key.sign_digest(digest, method)
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1G", help="Test file size (K/M/G suffix). Default 1G.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--signatures", type=int, default=50, help="Signatures timed for the fixed cost.")
    parser.add_argument("--key-type", default="RSA-PSS", choices=[k.value for k in KeyType if not k.is_binary_curve])
    parser.add_argument("--bits", type=int, default=None, help="RSA/DSA size (default 3072).")
    parser.add_argument("--hash-method", default="SHA-256", choices=[h.value for h in HashMethod])
    parser.add_argument("--dir", default=None, help="Where to make the temporary folder.")
    parser.add_argument("--json", default=None, help="Also write the results here.")
    args = parser.parse_args()
    key_type, method, size = KeyType.parse(args.key_type), HashMethod.parse(args.hash_method), parse_size(args.size)
    with tempfile.TemporaryDirectory(prefix="imgsign-bench-", dir=args.dir) as tmp:
        work = Path(tmp)
        image = work / "image.bin"
        make_file(image, size)
        keys: dict[str, PrivateKey] = {}
        skipped: dict[str, str] = {}
        for backend in BACKENDS:
            folder = work / f"backend{len(keys) + len(skipped)}"
            folder.mkdir()
            try:
                keys[backend.name] = open_signing_key(backend.prepare(folder, key_type, args.bits))
            except Skip as exc:
                skipped[backend.name] = str(exc)
        whole: dict[str, list[float]] = {name: [] for name in keys}
        names = list(keys)
        for round_number in range(args.rounds):
            for name in names[round_number % len(names):] + names[: round_number % len(names)]:
                whole[name].append(sign_file(keys[name], image, method))
        per_signature = {name: fixed_cost(key, method, args.signatures) for name, key in keys.items()}
    results = {name: {"sign_file_s": whole[name], "per_signature_s": per_signature[name]} for name in keys}
    bits = next(iter(keys.values())).key_size if keys else args.bits
    print(f"Signing {size / MIB:.0f} MiB, {key_type.value} {bits}-bit, {method.value}, "
          f"{args.rounds} rounds, {args.signatures} signatures for the fixed cost ({sys.platform})\n")
    print("| backend | sign file, best s | MiB/s (best) | fixed cost per signature, median ms | p95 ms |")
    print("|---|---:|---:|---:|---:|")
    for name in keys:
        best = min(whole[name])
        costs = sorted(per_signature[name])
        p95 = costs[min(len(costs) - 1, int(len(costs) * 0.95))]
        print(f"| {name} | {best:.2f} | {size / MIB / best:.0f} | {statistics.median(costs) * 1000:.2f} | "
              f"{p95 * 1000:.2f} |")
    for name, reason in skipped.items():
        print(f"| {name} | skipped: {reason} | | | |")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "skipped": skipped}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
