"""``imgsign upload`` against a plain unsigned upload of the same file to the same Glance, in one run.

Usage: python benchmarks/upload.py [--size 1G] [--rounds 1] [--dir DIR] [--json [PATH]]

Starts the test harness's Glance 33 (tests/servers/glance.py: glance-direct enabled, no import
plugins, file store), writes a file of random bytes (a raw image) and, rounds rotated:

* ``imgsign upload`` (stage while hashing, sign, glance-direct import, wait until active), run
  under a wrapper that reads the process's own ``/proc/self/io`` at exit: ``read_bytes`` (what
  it made the kernel read from the block device) and ``rchar`` (every byte its ``read()``s
  returned, page cache and sockets included);
* the same file unsigned with a plain ``PUT /v2/images/{id}/file`` (``requests``, in this process);
* the same file unsigned with glance-direct (stage, import, wait until active), which is what
  ``imgsign upload`` does without the signing: the difference between the two is imgsign's cost,
  the difference to the plain upload Glance's cost of an import (it copies the staged data into
  the store and checks the signature once more);
* the manual signed upload of the OpenStack documentation, for the same Glance work as
  ``imgsign upload`` without glance-direct: ``imgsign sign`` (one read), then ``POST`` the image
  with those properties and ``PUT /file`` (a second read; Glance checks the signature as it stores);
* the library call behind the command (``imgsign.glance.upload.upload_signed``, in this process),
  to time its data phase alone: create + stage while hashing, until the properties are made,
  against the plain glance-direct's create + stage (``stage_wall``).

The file is evicted from the page cache (``POSIX_FADV_DONTNEED``) before each run, so each run
reads it from the disk. Wall times, ratios to the plain upload, and the bytes read.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from imgsign._internal.glance_api import GlanceClient  # noqa: E402
from imgsign.errors import ImgsignError  # noqa: E402
from tests.conftest import cert_of, key_of  # noqa: E402
from tests.servers.glance import GlanceServer, glance_server  # noqa: E402
from tests.servers.keystone import keystone_server  # noqa: E402

PROJECT = "bench"
WRAPPER = """\
import runpy, sys
sys.argv = ["imgsign", *sys.argv[1:]]
try:
    runpy.run_module("imgsign", run_name="__main__")
finally:
    io = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
    sys.stderr.write("IO %s %s\\n" % (io["read_bytes"], io["rchar"]))
"""


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _imgsign_env(server: GlanceServer, workdir: Path) -> tuple[dict[str, str], Path]:
    clouds = workdir / "clouds.yaml"
    user = server.keystone.project_user(PROJECT).user
    cloud = server.keystone.cloud(user, image_endpoint_override=server.url)
    clouds.write_text(json.dumps({"clouds": {"bench": cloud}}))
    conf = workdir / "imgsign.conf"
    conf.write_text(f"[key_manager]\nbackend = imgsign\n\n[imgsign_embedded]\npath = {server.keystore}\n\n"
                    f"[imgsign]\nproject_id = {server.project_id(PROJECT)}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(OS_CLIENT_CONFIG_FILE=str(clouds), OS_CLOUD="bench", PYTHONPATH=str(REPO))
    return env, conf


def imgsign_upload(server: GlanceServer, workdir: Path, image: Path) -> dict[str, float]:
    env, conf = _imgsign_env(server, workdir)
    evict(image)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", WRAPPER, "-c", str(conf), "upload", str(image),
                           "--key", str(key_of("RSA-PSS")), "--cert", str(cert_of("RSA-PSS")), "--store-cert", "-q"],
                          capture_output=True, text=True, env=env, timeout=3600)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"imgsign upload failed ({proc.returncode}): {proc.stderr}")
    read_bytes, rchar = proc.stderr.rsplit("IO ", 1)[1].split()
    return {"wall": wall, "read_bytes": int(read_bytes), "rchar": int(rchar)}


def library_upload(server: GlanceServer, image: Path) -> dict[str, float]:
    from keystoneauth1 import session, token_endpoint

    from imgsign.algorithms import HashMethod
    from imgsign.glance.upload import upload_signed
    from imgsign.keys.loading import load_private_key
    from imgsign.signer import Signer

    token = server.keystone.token(server.keystone.project_user(PROJECT).user)
    glance = GlanceClient(session.Session(auth=token_endpoint.Token(server.url, token)))
    signer = Signer(load_private_key(key_of("RSA-PSS").read_bytes()), "bench-certificate-id", HashMethod.SHA256)
    staged: list[float] = []

    def make_properties(digest: bytes, handle: object, head: bytes) -> dict[str, str]:
        staged.append(time.monotonic())
        return signer.sign_digest(digest).as_dict()

    evict(image)
    start = time.monotonic()
    # Glance's own check fails (no such certificate in the key manager): only the data phase counts here.
    with contextlib.suppress(ImgsignError):
        upload_signed(glance, str(image), {"name": "lib", "disk_format": "raw", "container_format": "bare"},
                      HashMethod.SHA256, make_properties, import_timeout=600)
    return {"stage_wall": staged[0] - start}


def manual_signed_upload(server: GlanceServer, workdir: Path, image: Path) -> dict[str, float]:
    env, conf = _imgsign_env(server, workdir)
    headers = server.headers(PROJECT)
    base = f"{server.url}/v2/images"
    evict(image)
    start = time.monotonic()
    signed = subprocess.run([sys.executable, "-m", "imgsign", "-c", str(conf), "sign", str(image), "--key",
                             str(key_of("RSA-PSS")), "--cert", str(cert_of("RSA-PSS")), "--store-cert", "-q"],
                            capture_output=True, text=True, env=env, timeout=3600, check=True)
    created = requests.post(base, json={"name": "manual", "disk_format": "raw", "container_format": "bare",
                                        **json.loads(signed.stdout)}, headers=headers, timeout=60)
    created.raise_for_status()
    with open(image, "rb") as data:
        requests.put(f"{base}/{created.json()['id']}/file", data=data, timeout=3600,
                     headers={**headers, "Content-Type": "application/octet-stream"}).raise_for_status()
    return {"wall": time.monotonic() - start}


def plain_upload(server: GlanceServer, image: Path, direct: bool) -> dict[str, float]:
    headers = server.headers(PROJECT)
    base = f"{server.url}/v2/images"
    evict(image)
    start = time.monotonic()
    created = requests.post(base, json={"name": "plain", "disk_format": "raw", "container_format": "bare"},
                            headers=headers, timeout=60)
    created.raise_for_status()
    image_id = created.json()["id"]
    with open(image, "rb") as data:
        response = requests.put(f"{base}/{image_id}/{'stage' if direct else 'file'}", data=data, timeout=3600,
                                headers={**headers, "Content-Type": "application/octet-stream"})
    response.raise_for_status()
    staged = time.monotonic() - start
    if direct:
        requests.post(f"{base}/{image_id}/import", json={"method": {"name": "glance-direct"}}, headers=headers,
                      timeout=60).raise_for_status()
        while (status := requests.get(f"{base}/{image_id}", headers=headers, timeout=60).json()["status"]) != "active":
            if status in ("killed", "deleted"):
                raise SystemExit(f"plain import failed: {status}")
            time.sleep(0.2)
        return {"wall": time.monotonic() - start, "stage_wall": staged}
    return {"wall": time.monotonic() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1G")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--json", nargs="?", const="-", default=None)
    args = parser.parse_args()
    size = parse_size(args.size)
    workdir = Path(tempfile.mkdtemp(prefix="imgsign-bench-upload-", dir=args.dir))
    try:
        image = workdir / "disk.raw"
        with open(image, "wb") as out:
            for _ in range(size // (1 << 20)):
                out.write(os.urandom(1 << 20))
        results: dict[str, list[dict[str, float]]] = {"imgsign upload": [], "plain PUT /file": [],
                                                       "plain glance-direct": [], "upload_signed data phase": [],
                                                       "manual signed PUT /file": []}
        with keystone_server(workdir / "keystone") as keystone, \
                glance_server(workdir / "glance", keystone=keystone, keystore=workdir / "keystore.sqlite3") as server:
            runs = [("imgsign upload", lambda: imgsign_upload(server, workdir, image)),
                    ("plain PUT /file", lambda: plain_upload(server, image, direct=False)),
                    ("plain glance-direct", lambda: plain_upload(server, image, direct=True)),
                    ("upload_signed data phase", lambda: library_upload(server, image)),
                    ("manual signed PUT /file", lambda: manual_signed_upload(server, workdir, image))]
            for round_ in range(args.rounds):
                for name, run in runs[round_ % len(runs):] + runs[:round_ % len(runs)]:
                    results[name].append(run())
                    print(f"round {round_ + 1}: {name}: {results[name][-1]}", file=sys.stderr)
        def median_of(name: str, key: str) -> float:
            values = sorted(r[key] for r in results[name])
            return values[len(values) // 2]

        median = {name: median_of(name, "wall")
                  for name in ("imgsign upload", "plain PUT /file", "plain glance-direct", "manual signed PUT /file")}
        ours = results["imgsign upload"][-1]
        per_round = [{"imgsign/PUT /file": i["wall"] / p["wall"], "imgsign/glance-direct": i["wall"] / d["wall"],
                      "imgsign/manual signed": i["wall"] / m["wall"],
                      "stage while hashing/plain stage": s["stage_wall"] / d["stage_wall"]}
                     for i, p, d, s, m in zip(results["imgsign upload"], results["plain PUT /file"],
                                              results["plain glance-direct"], results["upload_signed data phase"],
                                              results["manual signed PUT /file"], strict=True)]
        summary = {
            "size": size,
            "wall_seconds": median,
            "ratio_to_plain_put_file": median["imgsign upload"] / median["plain PUT /file"],
            "ratio_to_plain_glance_direct": median["imgsign upload"] / median["plain glance-direct"],
            "ratio_to_manual_signed_put_file": median["imgsign upload"] / median["manual signed PUT /file"],
            "stage_seconds": {"stage while hashing": median_of("upload_signed data phase", "stage_wall"),
                              "plain stage": median_of("plain glance-direct", "stage_wall")},
            "ratio_stage_while_hashing_to_plain_stage": median_of("upload_signed data phase", "stage_wall")
            / median_of("plain glance-direct", "stage_wall"),
            "per_round": per_round,
            "imgsign_read_bytes": ours["read_bytes"], "imgsign_rchar": ours["rchar"],
            "imgsign_read_bytes_per_file_size": ours["read_bytes"] / size,
        }
        text = json.dumps(summary, indent=2)
        if args.json and args.json != "-":
            Path(args.json).write_text(text + "\n")
        print(text)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
