"""Adopting a base Nova converted from qcow2, against ``openssl dgst -sha256`` over the same file, in one run.

Usage: python benchmarks/adoption.py [--size 10G] [--data 2G] [--rounds 3] [--dir DIR] [--json [PATH]]

A qcow2 of ``--size`` virtual bytes with ``--data`` random bytes (three extents, holes between;
made as benchmarks/raw_digest.py makes its images) is signed by ``imgsign sign`` (with its
raw-digest statement) and converted with ``qemu-img convert -O raw`` into a sparse
``<instances>/_base/<sha1(id)>``, as Nova's ``fetch_to_raw`` does.  Then, each round, in an order
rotated every round:

* ``imgsign boot adopt ID --properties … --cert …`` with a fresh state directory: a full adoption
  (statement verified, base sealed, one read for its SHA-256 compared with the statement's, record
  written, verified-digest cache primed), the command as an operator runs it;
* ``openssl dgst -sha256`` over the base: the least any check of the whole file costs.

The ratio is openssl's wall time over the adoption's (imgsign's throughput over openssl's) within
one round, median over rounds; both results must be the same SHA-256.  The page cache is warm (the
base is read once first): CPU cost, not the disk.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from raw_digest import MIB, PKI, REPO, make_image, parse_size, run, sign_command

sys.path.insert(0, str(REPO))

from imgsign.compute.trust_record import cache_name


def openssl_sha256(path: Path) -> tuple[float, float, str]:
    wall, cpu, out = run(["openssl", "dgst", "-sha256", "-r", str(path)])
    return wall, cpu, out.split()[0]


def adopt(image_id: str, properties: Path, instances: Path, state: Path) -> tuple[float, float, str]:
    wall, cpu, out = run([sys.executable, "-m", "imgsign", "boot", "adopt", image_id, "--properties", str(properties),
                          "--cert", str(PKI / "leaf-rsa-pss.pem"), "--instances-path", str(instances),
                          "--state-dir", str(state), "--json"])
    adopted = json.loads(out)
    if (adopted["format"], adopted["source_format"]) != ("raw", "qcow2"):
        raise SystemExit(f"unexpected adoption: {adopted}")
    return wall, cpu, adopted["sha256"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="10G", help="virtual size of the image (default 10G)")
    parser.add_argument("--data", default="2G", help="random data in it (default 2G)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", help="work directory (default: a temporary one, removed afterwards)")
    parser.add_argument("--json", nargs="?", const="-", help="write the results as JSON (to PATH or stdout)")
    args = parser.parse_args()
    for tool in ("qemu-img", "qemu-io", "qemu-nbd", "nbdcopy", "openssl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is required (Debian qemu-utils, libnbd-bin, openssl)")
    size, data = parse_size(args.size), parse_size(args.data)
    work = Path(tempfile.mkdtemp(prefix="imgsign-adopt-bench-", dir=args.dir))
    try:
        image = work / "image.qcow2"
        make_image(image, size, data)
        _, _, signed = run(sign_command(image))
        properties = work / "properties.json"
        properties.write_text(signed)
        image_id = str(uuid.uuid4())
        instances = work / "instances"
        base = instances / "_base" / cache_name(image_id)
        base.parent.mkdir(parents=True)
        subprocess.run(["qemu-img", "convert", "-t", "none", "-f", "qcow2", "-O", "raw", str(image), str(base)],
                       check=True)
        image.unlink()
        with open(base, "rb") as handle:  # warm the page cache
            while handle.read(8 * MIB):
                pass
        expected = json.loads(signed)["imgsign_raw_v1_sha256"]
        cases = {
            "openssl dgst -sha256": lambda r: openssl_sha256(base),
            "imgsign boot adopt": lambda r: adopt(image_id, properties, instances, work / f"state-{r}"),
        }
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
        ratios = []
        for r in range(args.rounds):
            names = list(cases)
            order = names[r % len(names):] + names[:r % len(names)]
            walls = {}
            for name in order:
                wall, cpu, digest = cases[name](r)
                if digest != expected:
                    raise SystemExit(f"{name}: SHA-256 {digest}, the statement says {expected}")
                results[name].append((wall, cpu))
                walls[name] = wall
            ratios.append(walls["openssl dgst -sha256"] / walls["imgsign boot adopt"])
        allocated = base.stat().st_blocks * 512
        report: dict[str, object] = {
            "size": size, "data": data, "allocated": allocated, "rounds": args.rounds, "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "results": {name: {"wall_s": round(statistics.median(w for w, _ in runs), 3),
                               "cpu_s": round(statistics.median(c for _, c in runs), 3),
                               "mib_s": round(size / MIB / statistics.median(w for w, _ in runs))}
                        for name, runs in results.items()},
            "ratio": round(statistics.median(ratios), 3),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"base {size / MIB:.0f} MiB virtual, {allocated / MIB:.0f} MiB allocated; {args.rounds} rounds; "
          f"load average {report['load_average'][0]:.1f}")  # type: ignore[index]
    for name, figure in report["results"].items():  # type: ignore[attr-defined]
        print(f"  {name:24} {figure['wall_s']:7.2f} s wall  {figure['cpu_s']:7.2f} s CPU  {figure['mib_s']:6} MiB/s")
    print(f"  ratio (openssl time / adoption time, median): {report['ratio']:.3f}")
    if args.json:
        text = json.dumps(report, indent=2) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
        else:
            Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
