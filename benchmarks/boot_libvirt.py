"""What imgsign's hook costs a boot under real libvirt: ``virsh start`` with the hook against without it.

Usage (root; starts the private libvirtd of tests/servers/libvirt.py)::

    .venv/bin/python benchmarks/boot_libvirt.py                      # 1G and 10G bases, 5 rounds
    .venv/bin/python benchmarks/boot_libvirt.py --sizes 1G --rounds 3 --json r.json

* Each base is a qcow2 of that virtual size with three 64 MiB extents of pattern bytes
  (``qemu-io write -P``: 0x4f at 0, 0x21 in the middle, 0x5a at the end; holes between),
  signed with ``imgsign sign`` (RSA-PSS test key) and cached with ``imgsign boot cache``
  into ``_base`` as a sparse raw file (what Nova's ``force_raw_images`` makes), sealed.
* One guest per base, defined as Nova 34 writes it (a qcow2 overlay in its instance
  directory, TCG, 64 MiB, no OS: a running qemu is the end point).  Timed: ``virsh start``
  until it returns with the domain running (then ``virsh destroy``, not timed), in three
  configurations, order rotated each round:

  - ``none``: the hook is an empty script (``#!/bin/sh`` ``exit 0``): libvirt's own start;
  - ``warm``: imgsign's hook on the fast path (the base unchanged since its last full read);
  - ``cold``: imgsign's hook after its verified-digest entry for the base is removed, so
    ``prepare begin`` reads and hashes the whole base (what a first boot after ``boot cache``
    without a primed fast path, or after adoption by the hook, costs); ``start begin`` is
    then on the fast path.

  The page cache is warm (the base was just written and hashed), as for a second guest.
  Ratios are per round (hook / none) and their median is reported, since the machine is shared.
* The hook's own time per call: the hook script run directly (same interpreter, the
  environment libvirt gives hooks, the XML libvirt passed it at ``prepare begin`` and
  ``start begin``, recorded by the harness's observer), warm, ``--hook-runs`` times,
  wall and CPU (user + system of the hook and its qemu-img children).
* The hook runs from a regular install of this checkout (a wheel in a throw-away
  virtualenv that borrows this environment's dependencies, as ``throughput.py`` does);
  ``--editable`` runs it with this environment's interpreter instead.
* The observer the harness installs in ``hooks/qemu.d`` is replaced by a no-op for the
  timed starts, in every configuration.

Exit status: 0 when the warm hook's two calls take under 100 ms together (median wall),
3 when not, 1 when the benchmark failed.
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
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from imgsign.compute.trust_record import cache_name  # noqa: E402
from imgsign.compute.verified_cache import VerifiedCache  # noqa: E402
from tests.servers.libvirt import Libvirt, libvirt_daemon, unavailable  # noqa: E402
from tests.test_libvirt_e2e import nova_domain_xml  # noqa: E402

MIB = 1024 * 1024
PKI = REPO / "certs-test"
CERT_UUID = "0b6e3e1c-6a43-4bde-9a5e-3d1f6d1b8c2a"
EMPTY_HOOK = "#!/bin/sh\nexit 0\n"
HOOK_ENV = {"LC_ALL": "C", "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}
GOAL = 0.100  # seconds, both warm calls together
#: The floor of any call that parses a certificate: the interpreter and cryptography's x509 package.
FLOOR = "`python -c 'import cryptography.x509'` (floor)"
GIB = 1024 * MIB


def parse_size(text: str) -> int:
    units = {"K": 1024, "M": MIB, "G": 1024 * MIB}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def run(*args: object, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True,  # type: ignore
                          timeout=3600, **kwargs)


def regular_python(workdir: Path) -> str:
    """The Python of a throw-away virtualenv with a wheel of this checkout (see throughput.py)."""
    venv = workdir / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip())
    borrowed = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site / "borrowed-dependencies.pth").write_text("\n".join(borrowed) + "\n")
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-build-isolation", REPO)
    return str(python)


def write_script(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o755)
    os.replace(tmp, path)


class Base:
    """A signed image cached into ``_base`` and a guest on it."""

    def __init__(self, libvirt: Libvirt, host: Path, size: int) -> None:
        self.size = size
        self.image_id = str(uuid.uuid4())
        self.instances, self.state = host / "instances", host / "state"
        source = host / f"{self.image_id}.qcow2"
        run("qemu-img", "create", "-q", "-f", "qcow2", source, size)
        extent = 64 * MIB
        run("qemu-io", "-f", "qcow2", "-c", f"write -P 0x4f 0 {extent}",
            "-c", f"write -P 0x21 {size // 2} {extent}", "-c", f"write -P 0x5a {size - extent} {extent}", source)
        props = host / f"{self.image_id}.json"
        props.write_text(run(sys.executable, "-m", "imgsign", "sign", source, "--key", PKI / "leaf-rsa-pss.key",
                             "--cert-uuid", CERT_UUID).stdout)
        run(sys.executable, "-m", "imgsign", "boot", "cache", source, "--image-id", self.image_id, "--properties",
            props, "--cert", PKI / "leaf-rsa-pss.pem", "--instances-path", self.instances, "--state-dir", self.state)
        source.unlink()
        self.name = cache_name(self.image_id)
        self.path = self.instances / "_base" / self.name
        instance = str(uuid.uuid4())
        disk = self.instances / instance / "disk"
        disk.parent.mkdir(parents=True)
        run("qemu-img", "create", "-q", "-f", "qcow2", "-b", self.path, "-F", "raw", disk)
        self.domain = f"instance-{uuid.uuid4().hex[:8]}"
        xml = disk.parent / "libvirt.xml"
        xml.write_text(nova_domain_xml(self.domain, instance, self.image_id, disk))
        libvirt.virsh("define", str(xml))

    def forget(self) -> None:
        """Remove the base's verified-digest entry: the next check reads it in full."""
        VerifiedCache(str(self.state)).forget(self.name)


def start(libvirt: Libvirt, base: Base) -> float:
    begin = time.perf_counter()
    libvirt.virsh("start", base.domain)
    elapsed = time.perf_counter() - begin
    if libvirt.state(base.domain) != "running" or libvirt.qemu_pid(base.domain) is None:
        raise SystemExit(f"{base.domain} is not running after virsh start")
    libvirt.virsh("destroy", base.domain)
    deadline = time.monotonic() + 30
    while libvirt.qemu_processes(base.domain) and time.monotonic() < deadline:
        time.sleep(0.02)
    return elapsed


def hook_call(python: str, hook: Path, config: Path, domain: str, operation: str, xml: bytes) -> tuple[float, float]:
    """(wall, CPU) of one hook run as libvirt makes it; CPU includes its children (qemu-img)."""
    return timed([python, str(hook), domain, operation, "begin", "-"], config, xml)


def timed(argv: list[str], config: Path, xml: bytes) -> tuple[float, float]:
    """(wall, CPU) of ``argv`` with ``xml`` on stdin and the hook's environment."""
    read, write = os.pipe()
    env = {**HOOK_ENV, "IMGSIGN_BOOT_CONFIG": str(config)}
    begin = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.dup2(read, 0)
        os.close(write)
        os.execve(argv[0], argv, env)  # noqa: S606 - fork + exec: wait4 gives its own CPU time
    os.close(read)
    os.write(write, xml)
    os.close(write)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - begin
    if status != 0:
        raise SystemExit(f"{' '.join(argv)} failed (status {status})")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1G,10G", help="virtual sizes of the bases (default 1G,10G)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--hook-runs", type=int, default=20, help="direct hook runs per call (default 20)")
    parser.add_argument("--editable", action="store_true", help="run the hook with this environment's Python")
    parser.add_argument("--json", nargs="?", const="boot_libvirt.json", help="write the results here")
    args = parser.parse_args()
    reason = unavailable()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 1
    scratch = Path(tempfile.mkdtemp(prefix="imgsign-bootbench-"))
    try:
        python = sys.executable if args.editable else regular_python(scratch)
        with libvirt_daemon() as libvirt:
            return measure(libvirt, python, args)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def measure(libvirt: Libvirt, python: str, args: argparse.Namespace) -> int:
    hooks = libvirt.workdir / "etc" / "hooks"
    hook, observer = hooks / "qemu", hooks / "qemu.d" / "zz-observe"
    imgsign_hook = f"#!{python}\n" + hook.read_text().split("\n", 1)[1]
    observe = observer.read_text()
    host = libvirt.workdir / "bench-host"
    host.mkdir(mode=0o755)
    config = libvirt.boot_config
    config.write_text(f"[boot]\nmode = enforce\ninstances_path = {host / 'instances'}\n"
                      f"state_dir = {host / 'state'}\nlog_file = {host / 'hook.log'}\n")
    write_script(hook, imgsign_hook)
    bases = [Base(libvirt, host, parse_size(size)) for size in args.sizes.split(",")]

    # One untimed start each, observed: the XML libvirt passes at prepare and start begin.
    xmls: dict[str, dict[str, bytes]] = {}
    for base in bases:
        start(libvirt, base)
        xmls[base.domain] = {op: xml.encode() for op, sub, xml in libvirt.hook_calls(base.domain)
                             if sub == "begin" and op in ("prepare", "start")}
    write_script(observer, EMPTY_HOOK)

    configurations = ["none", "warm", "cold"]
    times: dict[tuple[str, str], list[float]] = {}
    for round_ in range(args.rounds):
        order = configurations[round_ % 3:] + configurations[:round_ % 3]
        for base in bases:
            for configuration in order:
                write_script(hook, EMPTY_HOOK if configuration == "none" else imgsign_hook)
                if configuration == "cold":
                    base.forget()
                elapsed = start(libvirt, base)
                times.setdefault((base.domain, configuration), []).append(elapsed)
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    write_script(hook, imgsign_hook)

    hook_times: dict[str, list[tuple[float, float]]] = {"prepare begin": [], "start begin": [],
                                                        "cold prepare begin": [], FLOOR: []}
    base = bases[0]
    for _ in range(args.hook_runs):
        for operation in ("prepare", "start"):
            hook_times[f"{operation} begin"].append(hook_call(python, hook, config, base.domain, operation,
                                                              xmls[base.domain][operation]))
        hook_times[FLOOR].append(timed([python, "-c", "import cryptography.x509"], config, b""))
    for _ in range(max(3, args.hook_runs // 5)):
        base.forget()
        hook_times["cold prepare begin"].append(hook_call(python, hook, config, base.domain, "prepare",
                                                    xmls[base.domain]["prepare"]))
    write_script(observer, observe)

    results: dict[str, object] = {"python": python, "rounds": args.rounds, "load": os.getloadavg()}
    print(f"\n`virsh start` to a running domain, median of {args.rounds} rounds "
          f"(load average {os.getloadavg()[0]:.1f}):\n")
    print("| base (virtual, sparse raw) | no hook | imgsign warm | ratio | imgsign cold (full read) | ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for base in bases:
        none = times[(base.domain, "none")]
        row: dict[str, float] = {"none": statistics.median(none)}
        cells = []
        for configuration in ("warm", "cold"):
            mine = times[(base.domain, configuration)]
            row[configuration] = statistics.median(mine)
            row[f"{configuration}_ratio"] = statistics.median(m / n for m, n in zip(mine, none, strict=True))
            cells += [f"{row[configuration] * 1000:.0f} ms", f"{row[f'{configuration}_ratio']:.2f}x"]
        results[f"{base.size / GIB:g}G"] = row
        print(f"| {base.size / GIB:g} GiB | {row['none'] * 1000:.0f} ms | " + " | ".join(cells) + " |")
    print(f"\nThe hook alone, run directly with libvirt's XML, {args.hook_runs} runs:\n")
    print("| call | wall median | wall min | CPU median |")
    print("| --- | ---: | ---: | ---: |")
    for call, samples in hook_times.items():
        walls, cpus = [s[0] for s in samples], [s[1] for s in samples]
        results[f"hook {call}"] = {"wall": statistics.median(walls), "wall_min": min(walls),
                                   "cpu": statistics.median(cpus)}
        print(f"| {call} | {statistics.median(walls) * 1000:.1f} ms | {min(walls) * 1000:.1f} ms | "
              f"{statistics.median(cpus) * 1000:.1f} ms |")
    both = statistics.median(w for w, _ in hook_times["prepare begin"]) + statistics.median(
        w for w, _ in hook_times["start begin"])
    met = both < GOAL
    print(f"\nwarm prepare + start: {both * 1000:.0f} ms; goal < {GOAL * 1000:.0f} ms: {'PASS' if met else 'MISS'}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0 if met else 3


if __name__ == "__main__":
    sys.exit(main())
