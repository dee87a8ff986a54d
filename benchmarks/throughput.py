"""Hot-cache throughput of imgsign signing and verification against the ``openssl`` commands.

Usage::

    python benchmarks/throughput.py                    # 1 GiB file, 3 rounds
    python benchmarks/throughput.py --size 256M --rounds 2 --hash-method SHA-512
    python benchmarks/throughput.py --dir /var/tmp --key-type ECC_SECP384R1 --json results.json

In a private temporary folder it writes a non-sparse test file and a throwaway
key + certificate (``imgsign keygen``), reads the file once so that every
measurement runs from the page cache, then each round times, in an order
rotated every round: ``openssl dgst`` (hash only), ``openssl dgst -sign`` and
``openssl dgst -verify`` (what operators run by hand today), the ``imgsign
sign`` and ``imgsign verify`` commands, and in-process library sign and verify.
Each imgsign command is compared with the openssl command doing the same job
(sign with sign, verify with verify), the library with ``openssl dgst``.

The commands run from a regular install of this checkout (a wheel in a
throw-away virtualenv that borrows this environment's dependencies), as a user
gets it from ``pip install imgsign``; ``--editable`` times this environment's
own ``imgsign`` instead (an editable install pays ~20 ms more per start for its
import hook).  It prints a markdown table (best and median MiB/s, median of the
per-round ratios, peak RSS of each command) and PASS/FAIL against the targets.
Exit status: 0 all targets met, 3 some missed, 1 the benchmark itself failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from imgsign.algorithms import HashMethod, KeyType
from imgsign.certificates import load_certificate
from imgsign.keys.loading import load_private_key
from imgsign.properties import SignatureProperties
from imgsign.signer import Signer
from imgsign.stream import digest
from imgsign.verifier import Verifier

MIB = 1024 * 1024
WRITE_BLOCK = 16 * MIB
CERT_UUID = "3f1d6c1e-8f7a-4a55-9d2b-4c1b0e6b7a10"
OPERATIONS = ("openssl dgst", "openssl sign", "openssl verify", "CLI sign", "CLI verify", "library sign",
              "library verify")
#: What each operation's ratio is taken against (same round).
BASELINE = {"openssl dgst": "openssl dgst", "openssl sign": "openssl sign", "openssl verify": "openssl verify",
            "CLI sign": "openssl sign", "CLI verify": "openssl verify", "library sign": "openssl dgst",
            "library verify": "openssl dgst"}
TARGET_RATIO, TARGET_RSS_MIB = 0.95, 64.0

#: (wall seconds, peak RSS MiB or None in-process, RSS floor MiB or None)
Sample = tuple[float, float | None, float | None]


class BenchmarkError(Exception):
    """A step failed: the numbers would mean nothing."""


def parse_size(text: str) -> int:
    """``1G``, ``256M``, ``512MiB``, ``4096`` (bytes): binary units."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if not match or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (e.g. 256M, 1G)")
    return int(match.group(1)) * 1024 ** " kmgt".index(match.group(2).lower() or " ")


def make_file(path: Path, size: int) -> None:
    """Write ``size`` incompressible bytes, one 16 MiB block at a time, every block different."""
    block = bytearray(os.urandom(WRITE_BLOCK))
    with open(path, "wb") as out:
        for counter, offset in enumerate(range(0, size, WRITE_BLOCK)):
            block[:8] = counter.to_bytes(8, "little")
            out.write(memoryview(block)[: min(WRITE_BLOCK, size - offset)])


def _force_fork() -> None:
    """A no-op ``preexec_fn``: it makes Popen fork() instead of vfork()/posix_spawn().

    At exec Linux seeds the child's ru_maxrss with the peak RSS of the address
    space it leaves.  After vfork() that is this process's own peak, which
    would hide the child's; after fork() it is this process's current anonymous
    memory, the "floor", measured before each command by running ``true``.
    """


#: Commands run as on a user's machine: Python may cache bytecode (a sandbox's
#: PYTHONDONTWRITEBYTECODE=1 would make every run compile imgsign from source).
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def spawn(argv: list[str], workdir: Path) -> tuple[float, float, str]:
    """Run ``argv``: (wall seconds, ru_maxrss in MiB, stdout). Raises unless it exits 0."""
    out_path, err_path = workdir / "stdout", workdir / "stderr"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, preexec_fn=_force_fork,
                                env=CHILD_ENV)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: keep Popen consistent
    if proc.returncode != 0:
        raise BenchmarkError(f"`{' '.join(argv)}` exited {proc.returncode}: {err_path.read_text().strip()}")
    return elapsed, usage.ru_maxrss / 1024, out_path.read_text()  # ru_maxrss is in KiB on Linux


class Bench:
    """The test file, the key material, and one measuring method per operation."""

    def __init__(self, workdir: Path, image: Path, key_type: KeyType, hash_method: HashMethod,
                 cli: list[str]) -> None:
        self.workdir, self.image, self.hash_method, self.key_type = workdir, image, hash_method, key_type
        self.cli = cli
        self.key_path, self.cert_path = workdir / "key.pem", workdir / "cert.pem"
        self.pub_path, self.sig_path = workdir / "public.pem", workdir / "openssl.sig"
        self.props_path = workdir / "properties.json"
        spawn([*self.cli, "keygen", "--key-type", key_type.value,
               "--out-key", str(self.key_path), "--out-cert", str(self.cert_path)], workdir)
        self.pub_path.write_text(spawn(["openssl", "x509", "-in", str(self.cert_path), "-pubkey", "-noout"],
                                       workdir)[2])
        self.key = load_private_key(self.key_path.read_bytes())
        self.certificate = load_certificate(self.cert_path.read_bytes())
        with open(image, "rb") as handle:  # the warm-up read: the file is in the page cache from now on
            self.expected_digest = digest(handle, hash_method).hex()
        self.cli_sign()  # untimed: warms the interpreter's files (and bytecode cache), writes properties.json
        self.cli_verify()  # untimed: the same for verify's modules
        self.openssl_sign()  # untimed: writes the signature openssl verify checks
        self.steps: dict[str, Callable[[], Sample]] = dict(zip(OPERATIONS, (
            self.openssl_dgst, self.openssl_sign, self.openssl_verify, self.cli_sign, self.cli_verify,
            self.library_sign, self.library_verify), strict=True))

    def _command(self, argv: list[str]) -> tuple[Sample, str]:
        floor = spawn(["true"], self.workdir)[1]
        elapsed, peak, out = spawn(argv, self.workdir)
        return (elapsed, peak, floor), out

    def openssl_dgst(self) -> Sample:
        sample, out = self._command(["openssl", "dgst", f"-{self.hash_method.openssl_name}", str(self.image)])
        if out.rsplit("=", 1)[-1].strip() != self.expected_digest:
            raise BenchmarkError(f"openssl dgst disagrees with hashlib: {out.strip()}")
        return sample

    def _pss(self, salt: str) -> list[str]:
        """openssl's options for RSA-PSS with MGF1 over the same hash, as OpenStack uses it."""
        if self.key_type is not KeyType.RSA_PSS:
            return []
        return ["-sigopt", "rsa_padding_mode:pss", "-sigopt", f"rsa_pss_saltlen:{salt}"]

    def openssl_sign(self) -> Sample:
        """The manual procedure's signing step: ``openssl dgst -sign``."""
        sample, _ = self._command(["openssl", "dgst", f"-{self.hash_method.openssl_name}", "-sign",
                                   str(self.key_path), *self._pss("max"), "-out", str(self.sig_path),
                                   str(self.image)])
        return sample

    def openssl_verify(self) -> Sample:
        """``openssl dgst -verify`` of the signature ``openssl_sign`` made."""
        sample, out = self._command(["openssl", "dgst", f"-{self.hash_method.openssl_name}", "-verify",
                                     str(self.pub_path), *self._pss("auto"), "-signature", str(self.sig_path),
                                     str(self.image)])
        if "Verified OK" not in out:
            raise BenchmarkError(f"openssl dgst -verify did not verify: {out.strip()}")
        return sample

    def cli_sign(self) -> Sample:
        sample, out = self._command([*self.cli, "sign", str(self.image), "--key", str(self.key_path), "--cert-uuid",
                                     CERT_UUID, "--hash-method", self.hash_method.value, "--format", "json"])
        SignatureProperties.from_mapping(json.loads(out))  # well-formed, or raise
        self.props_path.write_text(out)
        return sample

    def cli_verify(self) -> Sample:
        sample, out = self._command([*self.cli, "verify", str(self.image), "--properties", str(self.props_path),
                                     "--cert", str(self.cert_path), "--json"])
        if json.loads(out).get("valid") is not True:
            raise BenchmarkError(f"imgsign verify exited 0 without reporting a valid signature: {out.strip()}")
        return sample

    def library_sign(self) -> Sample:
        start = time.perf_counter()
        signer = Signer(self.key, CERT_UUID, self.hash_method, certificate=self.certificate)
        with open(self.image, "rb") as handle:
            signer.sign(handle)
        return time.perf_counter() - start, None, None

    def library_verify(self) -> Sample:
        properties = SignatureProperties.from_mapping(json.loads(self.props_path.read_text()))
        start = time.perf_counter()
        with open(self.image, "rb") as handle:
            Verifier.for_certificate(properties, self.certificate).verify_data(handle)  # raises unless valid
        return time.perf_counter() - start, None, None


def this_environment_command() -> list[str]:
    script = Path(sys.executable).with_name("imgsign")
    return [str(script)] if script.exists() else [sys.executable, "-m", "imgsign"]


def installed_command(workdir: Path) -> list[str]:
    """``imgsign`` from a regular (wheel) install of this checkout in a throw-away virtualenv.

    The virtualenv borrows this environment's site-packages for the dependencies through a
    ``.pth`` path line, which adds the directory without running its ``.pth`` files, so an
    editable install of imgsign there is not loaded.
    """
    venv = workdir / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    borrowed = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site / "borrowed-dependencies.pth").write_text("\n".join(borrowed) + "\n")
    repo = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    str(repo)], check=True)
    return [str(venv / "bin" / "imgsign")]


def cpu_busy(seconds: float = 1.0) -> float:
    """Fraction of all CPU time spent busy during the next ``seconds`` (from /proc/stat)."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            ticks = [int(field) for field in stat.readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]  # total, idle + iowait
    total, idle = sample()
    time.sleep(seconds)
    total2, idle2 = sample()
    return 1 - (idle2 - idle) / max(total2 - total, 1)


def machine_info(bench: Bench) -> dict[str, str]:
    with open("/proc/cpuinfo") as cpuinfo:
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "unknown")
    openssl = subprocess.run(["openssl", "version"], capture_output=True, text=True, check=False).stdout.strip()
    return {"cpu": cpu, "nproc": str(len(os.sched_getaffinity(0))), "kernel": platform.release(),
            "python": f"{platform.python_version()} ({sys.executable})", "openssl (dgst)": openssl,
            "openssl (hashlib)": ssl.OPENSSL_VERSION, "cryptography": metadata.version("cryptography"),
            "imgsign": metadata.version("imgsign"), "imgsign command": " ".join(bench.cli)}


def summarize(samples: dict[str, list[Sample]], size: int) -> dict[str, dict[str, Any]]:
    """Per operation: best/median MiB/s, median of per-round ratios to its openssl baseline, peak RSS."""
    summary: dict[str, dict[str, Any]] = {}
    for op, runs in samples.items():
        base = [size / MIB / s[0] for s in samples[BASELINE[op]]]
        speeds = [size / MIB / s[0] for s in runs]
        peak = max(runs, key=lambda s: s[1] or 0.0)
        summary[op] = {
            "best_mib_s": max(speeds), "median_mib_s": statistics.median(speeds),
            "baseline": BASELINE[op],
            "ratio_median": statistics.median(s / b for s, b in zip(speeds, base, strict=True)),
            "peak_rss_mib": peak[1], "rss_floor_mib": peak[2],
            # Within 1 MiB of the floor: the command's own peak is at most this, maybe much less.
            "rss_is_upper_bound": peak[1] is not None and peak[1] - peak[2] < 1.0,
            "seconds": [s[0] for s in runs],
        }
    return summary


def report(summary: dict[str, dict[str, Any]], info: dict[str, str], args: argparse.Namespace) -> bool:
    """Print the markdown table, the machine, and PASS/FAIL lines; True if every target is met."""
    print(f"\n{args.size / MIB:.0f} MiB file, {args.rounds} rounds, {args.key_type.value}, {args.hash_method.value}; "
          "hot cache (the file was read once before any timing); CLI times include interpreter start-up\n")
    print("| operation | best MiB/s | median MiB/s | ratio (median) | to | peak RSS MiB |")
    print("|---|---:|---:|---:|---|---:|")
    for op, s in summary.items():
        rss = "in-process" if s["peak_rss_mib"] is None else f"{s['peak_rss_mib']:.1f}"
        rss = f"≤ {rss}" if s["rss_is_upper_bound"] else rss
        print(f"| {op} | {s['best_mib_s']:.0f} | {s['median_mib_s']:.0f} | {s['ratio_median']:.3f} | "
              f"{s['baseline']} | {rss} |")
    floors = [s["rss_floor_mib"] for s in summary.values() if s["rss_is_upper_bound"]]
    if floors:
        print(f"\n≤: at the measurement floor ({max(floors):.1f} MiB, this script's memory that fork() copies "
              "into the child): the command's own peak is lower.")
    print("\n" + "\n".join(f"- {key}: {value}" for key, value in info.items()) + "\n")
    ok = True
    for op in ("CLI sign", "CLI verify"):
        ratio, rss = summary[op]["ratio_median"], summary[op]["peak_rss_mib"]
        baseline = summary[op]["baseline"]
        for passed, text in ((ratio >= TARGET_RATIO, f"ratio to {baseline} {ratio:.3f} (target >= {TARGET_RATIO})"),
                             (rss < TARGET_RSS_MIB, f"peak RSS {rss:.1f} MiB (target < {TARGET_RSS_MIB:.0f} MiB)")):
            print(f"{'PASS' if passed else 'FAIL'}: {op} {text}")
            ok = ok and passed
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=1024 * MIB, help="test file size, e.g. 256M (default 1G)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every operation (default 3)")
    parser.add_argument("--dir", type=Path, help="parent of the temporary folder (default: the system's)")
    parser.add_argument("--key-type", choices=[k.value for k in KeyType], default=KeyType.RSA_PSS.value)
    parser.add_argument("--hash-method", choices=[h.value for h in HashMethod], default=HashMethod.SHA256.value)
    parser.add_argument("--editable", action="store_true",
                        help="time this environment's own imgsign command instead of a regular install")
    parser.add_argument("--json", nargs="?", const="-", metavar="PATH",
                        help="also write the results as JSON to PATH (stdout without PATH)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.dir is not None and not args.dir.is_dir():
        parser.error(f"--dir {args.dir} is not a directory")
    args.key_type, args.hash_method = KeyType.parse(args.key_type), HashMethod.parse(args.hash_method)

    busy = cpu_busy()
    if busy > 0.1:
        print(f"warning: the CPUs are {busy:.0%} busy with other work: the numbers will be skewed", file=sys.stderr)
    workdir = Path(tempfile.mkdtemp(prefix="imgsign-bench-", dir=args.dir))
    samples: dict[str, list[Sample]] = {op: [] for op in OPERATIONS}
    try:
        image = workdir / "image.raw"
        print(f"writing {args.size / MIB:.0f} MiB to {image}", file=sys.stderr)
        make_file(image, args.size)
        cli = this_environment_command() if args.editable else installed_command(workdir)
        bench = Bench(workdir, image, args.key_type, args.hash_method, cli)
        for r in range(args.rounds):
            for op in OPERATIONS[r % len(OPERATIONS):] + OPERATIONS[: r % len(OPERATIONS)]:
                sample = bench.steps[op]()
                samples[op].append(sample)
                rss = f"  peak RSS {sample[1]:.1f} MiB (floor {sample[2]:.1f})" if sample[1] is not None else ""
                print(f"round {r + 1}: {op:<14} {sample[0]:6.3f} s {args.size / MIB / sample[0]:6.0f} MiB/s{rss}",
                      file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - BenchmarkError, or the library refusing its own signature
        print(f"benchmark aborted: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    info = machine_info(bench)
    info["other CPU use before the run"] = f"{busy:.0%}"
    summary = summarize(samples, args.size)
    ok = report(summary, info, args)
    if args.json:
        document = json.dumps({"size_bytes": args.size, "rounds": args.rounds, "key_type": args.key_type.value,
                               "hash_method": args.hash_method.value, "hot_cache": True, "machine": info,
                               "results": summary, "targets_met": ok}, indent=2)
        if args.json == "-":
            print(document)
        else:
            Path(args.json).write_text(document + "\n")
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())
