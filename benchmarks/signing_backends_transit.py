"""What signing through OpenBao/Vault transit costs, next to a key file, in the same run.

Usage::

    python benchmarks/signing_backends_transit.py                     # 1 GiB, 3 rounds, own OpenBao dev server
    python benchmarks/signing_backends_transit.py --size 256M --rounds 5 --signatures 200
    VAULT_ADDR=https://bao:8200 VAULT_TOKEN=... python benchmarks/signing_backends_transit.py --reuse-server

Without ``--reuse-server`` it starts an OpenBao dev server on 127.0.0.1 (the test harness's,
``tests/servers/openbao.py``) and enables transit; with it, it uses ``VAULT_ADDR``/``VAULT_TOKEN``
and creates its keys under the ``transit`` mount (names ``imgsign-bench-*``).

For each key type (RSA-PSS 3072 and ECC_SECP384R1) it makes one key file (``imgsign keygen``) and
one transit key, then in every round (order rotated) times ``imgsign sign`` over the same image
from the page cache with each: the difference is the whole price of the backend for one image.
It also times, in-process, the *fixed cost per signature*: opening the key (``open_signing_key``:
one ``GET keys/NAME``) and one ``sign_digest`` (one ``POST sign/NAME``, then the local check),
medians over ``--signatures`` calls, against the key file's ``sign_digest``.

:func:`measure_transit` is the part a combined backend benchmark calls.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from imgsign.algorithms import HashMethod  # noqa: E402
from imgsign.keys.loading import load_private_key, open_signing_key  # noqa: E402

MIB = 1024 * 1024
KEY_TYPES = {"RSA-PSS": ("rsa-3072", ["--key-type", "RSA-PSS", "--bits", "3072"]),
             "ECC_SECP384R1": ("ecdsa-p384", ["--key-type", "ECC_SECP384R1"])}
CERT_UUID = "3f1d6c1e-8f7a-4a55-9d2b-4c1b0e6b7a10"


def _cli(*args: object, env: dict[str, str] | None = None) -> float:
    """Seconds one ``imgsign`` command takes (it must succeed)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "imgsign", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"imgsign {' '.join(map(str, args))} failed ({proc.returncode}): {proc.stderr.strip()}")
    return elapsed


def _median_ms(call: Any, count: int) -> float:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def measure_transit(image: Path, work: Path, rounds: int, signatures: int, env: dict[str, str]) -> list[dict[str, Any]]:
    """Rows ``{key_type, backend, cli_median_s, cli_mib_s, open_ms, sign_ms}`` for a key file and transit,
    measured in the same rounds over ``image``; ``env`` holds VAULT_ADDR and VAULT_TOKEN."""
    size = image.stat().st_size
    ca = REPO / "certs-test"
    rows = []
    os.environ.update(env)  # the in-process measurements read the same settings
    for key_type, (transit_type, args) in KEY_TYPES.items():
        key_file, cert_file = work / f"{transit_type}.key", work / f"{transit_type}.pem"
        _cli("keygen", *args, "--out-key", key_file, "--out-cert", cert_file, "--force")
        reference = f"hashivault://imgsign-bench-{transit_type}-{os.getpid()}"
        transit_cert = work / f"{transit_type}-transit.pem"
        _cli("keygen", *args, "--key", reference, "--out-cert", transit_cert, "--ca-cert",
             ca / "intermediate-ca.pem", "--ca-key", ca / "intermediate-ca.key", env=env)
        backends = {"key file": (str(key_file), cert_file), "transit": (reference, transit_cert)}
        times: dict[str, list[float]] = {name: [] for name in backends}
        for round_number in range(rounds):
            order = list(backends)[round_number % 2:] + list(backends)[:round_number % 2]
            for name in order:
                key, cert = backends[name]
                times[name].append(_cli("sign", image, "--key", key, "--cert", cert, "--cert-uuid", CERT_UUID,
                                        "--hash-method", "SHA-256", "-q", env=env))
        digest = hashlib.sha256(b"benchmark").digest()
        file_key = load_private_key(key_file.read_bytes())
        transit_key = open_signing_key(reference)
        if transit_key is None:
            raise SystemExit(f"{reference} is not a key reference")
        pem = key_file.read_bytes()
        for name, open_ms, key in (
            ("key file", _median_ms(lambda p=pem: load_private_key(p), signatures), file_key),
            ("transit", _median_ms(lambda r=reference: open_signing_key(r), signatures), transit_key),
        ):
            median = statistics.median(times[name])
            rows.append({"key_type": key_type, "backend": name, "cli_median_s": median,
                         "cli_mib_s": size / MIB / median, "open_ms": open_ms,
                         "sign_ms": _median_ms(lambda k=key, d=digest: k.sign_digest(d, HashMethod.SHA256),
                                               signatures)})
    return rows


@contextlib.contextmanager
def _transit_server(reuse: bool) -> Iterator[dict[str, str]]:
    if reuse:
        yield {"VAULT_ADDR": os.environ["VAULT_ADDR"], "VAULT_TOKEN": os.environ["VAULT_TOKEN"]}
        return
    from tests.servers import openbao

    with openbao.openbao_server() as server:
        server.api("POST", "sys/mounts/transit", {"type": "transit"})
        yield {"VAULT_ADDR": server.url, "VAULT_TOKEN": server.root_token}


def _parse_size(text: str) -> int:
    units = {"K": 1024, "M": MIB, "G": 1024 * MIB}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="1G")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--signatures", type=int, default=100, help="calls per fixed-cost median")
    parser.add_argument("--dir", default=None, help="where to write the test image")
    parser.add_argument("--reuse-server", action="store_true", help="use VAULT_ADDR/VAULT_TOKEN, start nothing")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=options.dir, prefix="imgsign-bench-") as tmp:
        work = Path(tmp)
        image = work / "image.raw"
        with open(image, "wb") as out:
            for _ in range(_parse_size(options.size) // (16 * MIB)):
                out.write(os.urandom(16 * MIB))
        with open(image, "rb") as handle:  # into the page cache
            while handle.read(16 * MIB):
                pass
        size = image.stat().st_size
        with _transit_server(options.reuse_server) as env:
            rows = measure_transit(image, work, options.rounds, options.signatures, env)
    print(f"image {size // MIB} MiB, {options.rounds} rounds, "
          f"medians; fixed costs over {options.signatures} calls\n")
    print("| key type | backend | `imgsign sign` s | MiB/s | open key ms | sign_digest ms |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['key_type']} | {row['backend']} | {row['cli_median_s']:.2f} | {row['cli_mib_s']:.0f} | "
              f"{row['open_ms']:.2f} | {row['sign_ms']:.2f} |")


if __name__ == "__main__":
    main()
