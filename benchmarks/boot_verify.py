"""Pre-boot verification cost: first boot (full read) and later boots (verified-digest cache).

Usage: python benchmarks/boot_verify.py [--size 10G] [--dense-size 2G] [--dir DIR] [--runs 20]

* A ``--size`` sparse raw base file (default 10 GiB, like a large cached image) is
  verified into a temporary image cache with a trust record, then checked with
  ``imgsign.compute.boot.verify_for_boot``: once with an empty verified-digest cache
  (reads the whole file) and ``--runs`` times with the cache warm (target:
  < 50 ms for an unchanged 10 GiB base).
* A ``--dense-size`` file of random-looking data gives the first-boot throughput
  on real data (page cache warm), and ``sha256sum`` on the same file in the same
  run gives the reference.
* The whole hook (``hooks/libvirt-qemu`` as libvirt runs it, Python start-up
  included) is timed on the cached path.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from imgsign import load_certificate, load_private_key, sign  # noqa: E402
from imgsign.compute import boot, image_cache  # noqa: E402
from imgsign.algorithms import HashMethod  # noqa: E402
from imgsign.compute.trust_record import RecordStore, cache_name  # noqa: E402
from imgsign.compute.verified_cache import VerifiedCache  # noqa: E402
from imgsign.policy import Policy  # noqa: E402

MIB = 1024 * 1024
PKI = REPO / "certs-test"


def parse_size(text: str) -> int:
    units = {"K": 1024, "M": MIB, "G": 1024 * MIB}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def make_dense(path: Path, size: int) -> None:
    block = os.urandom(16 * MIB)
    with open(path, "wb") as out:
        written, counter = 0, 0
        while written < size:
            piece = hashlib.sha256(counter.to_bytes(8, "little")).digest() + block
            piece = piece[: min(len(piece), size - written)]
            out.write(piece)
            written += len(piece)
            counter += 1


def cached_image(work: Path, source: Path) -> tuple[Path, RecordStore, str]:
    """Sign ``source`` and verify it into an image cache, as Nova's download would."""
    key = load_private_key((PKI / "leaf-rsa-pss.key").read_bytes())
    cert = load_certificate((PKI / "leaf-rsa-pss.pem").read_bytes())
    cert_id = str(uuid.uuid4())
    with open(source, "rb") as handle:
        props = sign(handle, key, cert_id, HashMethod.SHA256, certificate=cert)
    records = RecordStore(str(work / "state"))
    image_id = str(uuid.uuid4())
    with open(source, "rb") as handle:
        image_cache.add_to_cache(handle, image_id, props, cert, records, instances_path=str(work / "instances"),
                                 policy=Policy(), force_raw=False, immutable=True)
    return work / "instances" / "_base" / cache_name(image_id), records, image_id


def time_boot(base: Path, records: RecordStore, cache: VerifiedCache) -> tuple[float, boot.BootDecision]:
    start = time.perf_counter()
    decision = boot.verify_for_boot(str(base), records, boot.BootPolicy(immutable_bases=True), cache)
    return time.perf_counter() - start, decision


def hook_time(work: Path, base: Path, image_id: str) -> float:
    disk = work / "instances" / "vm" / "disk"
    disk.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(disk)], check=True)
    config = work / "boot.conf"
    config.write_text(f"[boot]\nmode = enforce\ninstances_path = {work / 'instances'}\n"
                      f"state_dir = {work / 'state'}\nlog_file =\n")
    xml = (f'<domain><name>vm</name><uuid>{uuid.uuid4()}</uuid><metadata><nova:instance '
           f'xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1"><nova:root type="image" uuid="{image_id}"/>'
           f'</nova:instance></metadata><devices><disk type="file" device="disk"><driver name="qemu" '
           f'type="qcow2"/><source file="{disk}"/><target dev="vda"/></disk></devices></domain>')
    times = []
    for _ in range(5):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, str(REPO / "hooks" / "libvirt-qemu"), "vm", "prepare", "begin", "-"],
                              input=xml, text=True, capture_output=True,
                              env={**os.environ, "IMGSIGN_BOOT_CONFIG": str(config)})
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            sys.exit(f"hook refused: {proc.stderr}")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="10G", help="sparse base file size (default 10G)")
    parser.add_argument("--dense-size", default="2G", help="random-data file size for throughput (default 2G)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--dir", help="work directory (default: a temporary one, removed afterwards)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imgsign-boot-bench-", dir=args.dir))
    try:
        sparse = work / "sparse.raw"
        with open(sparse, "wb") as handle:
            handle.truncate(parse_size(args.size))
        base, records, image_id = cached_image(work / "a", sparse)
        sparse.unlink()
        cache = VerifiedCache(records.state_dir)
        first, decision = time_boot(base, records, cache)
        assert decision.allowed, decision
        warm = [time_boot(base, records, cache)[0] for _ in range(args.runs)]
        hook = hook_time(work / "a", base, image_id)

        dense = work / "dense.raw"
        make_dense(dense, parse_size(args.dense_size))
        dense_base, dense_records, _ = cached_image(work / "b", dense)
        dense.unlink()
        subprocess.run(["cat", str(dense_base)], stdout=subprocess.DEVNULL, check=True)  # page cache warm
        rounds = []
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run(["sha256sum", str(dense_base)], stdout=subprocess.DEVNULL, check=True)
            reference = time.perf_counter() - start
            full, decision = time_boot(dense_base, dense_records, None)  # type: ignore[arg-type]
            assert decision.allowed, decision
            rounds.append((full, reference))
        size = dense_base.stat().st_size / MIB
        full = statistics.median(r[0] for r in rounds)
        reference = statistics.median(r[1] for r in rounds)
        ratio = statistics.median(r[1] / r[0] for r in rounds)

        gib = base.stat().st_size / (1024 * MIB)
        print(f"| measurement | result |\n| --- | --- |")
        print(f"| first boot, {gib:.0f} GiB sparse base (full read) | {first:.2f} s ({gib * 1024 / first:.0f} MiB/s) |")
        print(f"| later boot, unchanged {gib:.0f} GiB base (cache hit), median of {args.runs} | "
              f"{statistics.median(warm) * 1000:.2f} ms (max {max(warm) * 1000:.2f} ms) |")
        print(f"| whole hook process, cache hit (Python start-up, qemu-img, XML) | {hook * 1000:.0f} ms |")
        print(f"| first boot, {size:.0f} MiB random data, page cache warm | {full:.2f} s ({size / full:.0f} MiB/s) |")
        print(f"| sha256sum on the same file, same run | {reference:.2f} s ({size / reference:.0f} MiB/s), "
              f"imgsign/sha256sum = {ratio:.2f} |")
        target = statistics.median(warm) < 0.050
        print(f"\ntarget unchanged base < 50 ms: {'PASS' if target else 'FAIL'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
