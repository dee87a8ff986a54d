"""Cost of the raw-digest statement: ``imgsign sign`` on a qcow2 with and without it, in one run.

Usage: python benchmarks/raw_digest.py [--images 1G:300M,10G:300M] [--rounds 3] [--dir DIR] [--json [PATH]]
                                       [--alternatives]

For each ``VIRTUAL:DATA`` pair a qcow2 of that virtual size is made with ``qemu-img create`` and
``qemu-io`` (DATA of random bytes in three extents, holes between), then, rounds rotated:

* ``imgsign sign --no-raw-digest`` and ``imgsign sign`` (the statement; streamed through
  ``nbdcopy``/``qemu-nbd``, no temporary file), the commands as a user runs them;
* ``raw_digest()`` alone, in-process;
* the Glance re-signing, in-process: ``imgsign.glance.pipeline.resign()`` of the qcow2 with
  ``raw_digest=False`` and with the statement (``imgsign_resign`` with ``output_format = qcow2``);
* with ``--alternatives``: ``qemu-img convert -O raw`` into a sparse temporary file hashed with
  SEEK_DATA/SEEK_HOLE (holes hashed from a zero buffer, not read).

The page cache is warm (the image is read once first): the figures are CPU cost, not the disk.
Medians over the rounds; wall time, and CPU time (user+system of the children) for the commands.
The statement's cost is reported as the difference of the medians with and without it, and as
their ratio.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from imgsign._internal import raw_digest  # noqa: E402

PKI = REPO / "certs-test"
CERT_UUID = "0b6e3e1c-6a43-4bde-9a5e-3d1f6d1b8c2a"
MIB = 1024 * 1024
UNITS = {"K": 1024, "M": MIB, "G": 1024 * MIB}


def parse_size(text: str) -> int:
    text = text.strip().upper()
    return int(text[:-1]) * UNITS[text[-1]] if text[-1] in UNITS else int(text)


def make_image(path: Path, virtual: int, data: int) -> None:
    """A qcow2 of ``virtual`` bytes with ``data`` bytes of random data in three extents."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(virtual)], check=True)
    raw = path.with_suffix(".chunk")
    extent = data // 3 // MIB * MIB
    raw.write_bytes(os.urandom(extent))
    commands: list[str] = []
    for i in range(3):
        offset = (virtual - extent) * i // 2 // MIB * MIB
        commands += ["-c", f"write -s {raw} {offset} {extent}"]
    subprocess.run(["qemu-io", "-f", "qcow2", *commands, str(path)], check=True, capture_output=True)
    raw.unlink()


def run(command: list[str]) -> tuple[float, float, str]:
    """Wall time, children's CPU time and stdout of ``command``."""
    before = os.times()
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = os.times()
    if proc.returncode != 0:
        raise SystemExit(f"{command[:4]} failed ({proc.returncode}): {proc.stderr.strip()}")
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return wall, cpu, proc.stdout


def sign_command(image: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "imgsign", "sign", str(image), "--key", str(PKI / "leaf-rsa-pss.key"),
            "--cert-uuid", CERT_UUID, "-q", *extra]


def streamed(image: Path) -> str:
    fd = os.open(image, os.O_RDONLY)
    try:
        return raw_digest.raw_digest(fd, str(image)).sha256.hex()
    finally:
        os.close(fd)


def resigned(image: Path, original: object, statement: bool) -> str | None:
    """``pipeline.resign()`` as the Glance plugin calls it; the statement's raw SHA-256 (None without)."""
    from imgsign import load_certificate, load_private_key
    from imgsign.glance.pipeline import resign

    key = load_private_key((PKI / "leaf-ecc-secp384r1.key").read_bytes())
    certificate = load_certificate((PKI / "leaf-ecc-secp384r1.pem").read_bytes())
    with open(image, "rb") as data:
        new = resign(data, key, "service", original, certificate=certificate,  # type: ignore[arg-type]
                     raw_digest=statement)
    if new is None:
        raise SystemExit("resign kept the original signature")
    return new["imgsign_raw_v1_sha256"] if statement else None


def sparse_temp(image: Path, work: Path) -> str:
    """Alternative (b): convert into a sparse temporary file, hash data extents and holes."""
    out = work / "convert.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(image), str(out)], check=True)
    hasher, zeros = hashlib.sha256(), bytes(MIB)
    buffer = memoryview(mmap.mmap(-1, MIB))
    fd = os.open(out, os.O_RDONLY)
    try:
        size, pos = os.fstat(fd).st_size, 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                data = size
            while pos < data:
                n = min(MIB, data - pos)
                hasher.update(zeros if n == MIB else zeros[:n])
                pos += n
            end = os.lseek(fd, pos, os.SEEK_HOLE) if pos < size else size
            while pos < end:
                n = os.preadv(fd, [buffer[:min(MIB, end - pos)]], pos)
                hasher.update(buffer[:n])
                pos += n
    finally:
        os.close(fd)
        out.unlink()
    return hasher.hexdigest()


def timed(func: Callable[[], str | None]) -> tuple[float, str | None]:
    start = time.perf_counter()
    result = func()
    return time.perf_counter() - start, result


def bench(image: Path, work: Path, rounds: int, alternatives: bool) -> dict[str, object]:
    with open(image, "rb") as handle:  # warm the page cache
        while handle.read(8 * MIB):
            pass
    reference = None
    cases: dict[str, Callable[[], tuple[float, float]]] = {}

    def command(extra: tuple[str, ...], with_statement: bool) -> Callable[[], tuple[float, float]]:
        def case() -> tuple[float, float]:
            nonlocal reference
            wall, cpu, out = run(sign_command(image, *extra))
            properties = json.loads(out)
            if with_statement:
                reference = reference or properties["imgsign_raw_v1_sha256"]
                if properties["imgsign_raw_v1_sha256"] != reference:
                    raise SystemExit("the raw digest changed between rounds")
            elif "imgsign_raw_v1_sha256" in properties:
                raise SystemExit("--no-raw-digest emitted a statement")
            return wall, cpu
        return case

    def library(label: str, func: Callable[[], str | None]) -> Callable[[], tuple[float, float]]:
        def case() -> tuple[float, float]:
            cpu0 = os.times()
            wall, digest = timed(func)
            cpu1 = os.times()
            if reference is not None and digest is not None and digest != reference:
                raise SystemExit(f"{label}: digest {digest} differs from the statement's {reference}")
            return wall, sum(cpu1[:4]) - sum(cpu0[:4])
        return case

    cases["sign --no-raw-digest"] = command(("--no-raw-digest",), False)
    cases["sign (with statement)"] = command((), True)
    cases["raw_digest() alone"] = library("raw_digest", lambda: streamed(image))
    from imgsign.properties import SignatureProperties

    original = SignatureProperties.from_mapping(json.loads(run(sign_command(image, "--no-raw-digest"))[2]))
    cases["resign(raw_digest=False)"] = library("resign", lambda: resigned(image, original, False))
    cases["resign (with statement)"] = library("resign", lambda: resigned(image, original, True))
    if alternatives:
        cases["convert to sparse temp + hash"] = library("sparse temp", lambda: sparse_temp(image, work))
    names = list(cases)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        if reference is None:  # the first round must learn the reference first
            order = ["sign (with statement)", *[n for n in order if n != "sign (with statement)"]]
        for name in order:
            results[name].append(cases[name]())
    figures: dict[str, object] = {
        name: {"wall_s": round(statistics.median(w for w, _ in runs), 3),
               "cpu_s": round(statistics.median(c for _, c in runs), 3)} for name, runs in results.items()}
    for label, without, with_statement in (("sign", "sign --no-raw-digest", "sign (with statement)"),
                                          ("resign", "resign(raw_digest=False)", "resign (with statement)")):
        a, b = figures[without], figures[with_statement]
        figures[f"statement cost in {label}"] = {  # type: ignore[index]
            "wall_s": round(b["wall_s"] - a["wall_s"], 3), "cpu_s": round(b["cpu_s"] - a["cpu_s"], 3),  # type: ignore[index]
            "wall_ratio": round(b["wall_s"] / a["wall_s"], 2)}  # type: ignore[index]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default="1G:300M,10G:300M", help="VIRTUAL:DATA pairs (default 1G:300M,10G:300M)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", help="work directory (default: a temporary one, removed afterwards)")
    parser.add_argument("--alternatives", action="store_true", help="also time the measured alternatives")
    parser.add_argument("--json", nargs="?", const="-", help="write the results as JSON (to PATH or stdout)")
    args = parser.parse_args()
    for tool in ("qemu-img", "qemu-io", "qemu-nbd", "nbdcopy"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is required (Debian qemu-utils, libnbd-bin)")
    work = Path(tempfile.mkdtemp(prefix="imgsign-raw-bench-", dir=args.dir))
    report: dict[str, object] = {"cpus": os.cpu_count(), "rounds": args.rounds, "load_average": os.getloadavg()}
    try:
        for pair in args.images.split(","):
            virtual, data = (parse_size(p) for p in pair.split(":"))
            image = work / f"{pair.replace(':', '-')}.qcow2"
            make_image(image, virtual, data)
            figures = bench(image, work, args.rounds, args.alternatives)
            report[pair] = figures
            print(f"{pair} (virtual:data), qcow2 file {image.stat().st_size / MIB:.0f} MiB")
            for name, figure in figures.items():
                ratio = f"  (x{figure['wall_ratio']:.2f} wall)" if "wall_ratio" in figure else ""
                print(f"  {name:32} {figure['wall_s']:7.2f} s wall  {figure['cpu_s']:7.2f} s CPU{ratio}")
            image.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        text = json.dumps(report, indent=2) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
        else:
            Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
