"""A snapshot uploaded through ``imgsign gateway`` against the same file straight to Glance, in one run.

Usage: python benchmarks/gateway.py [--size 1G] [--rounds 3] [--dir DIR] [--json [PATH]]

Starts the test harness's Keystone and Glance 33 (tests/servers/glance.py: glance-direct, no import
plugins, file store) and the gateway in this process (aiohttp in a thread, the host key a key file;
libvirt's answer is a fixed stand-in, which costs nothing next to the data), writes a file of random
bytes and, rounds rotated:

* ``plain PUT /file``: the file unsigned, ``POST`` + ``PUT /v2/images/{id}/file`` straight to Glance
  (what nova-compute does without the gateway);
* ``plain glance-direct``: the file unsigned, ``POST`` + ``PUT /stage`` + import + wait until active;
* ``gateway``: a snapshot image (``image_type``, ``instance_uuid``), ``PUT /file`` to the gateway,
  which stages while hashing, signs, sets the provenance, imports and waits until active.

Wall times and ratios to the plain ``PUT /file`` (median over rounds). The file is evicted from the
page cache before each run. Run it on an otherwise idle machine: the script prints the load average.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from imgsign.gateway.config import GatewayConfig, SigningConfig  # noqa: E402
from imgsign.gateway.domains import DomainLookup  # noqa: E402
from imgsign.gateway.intercept import DomainInfo  # noqa: E402
from tests.conftest import cert_of, key_of  # noqa: E402
from tests.servers.glance import glance_server  # noqa: E402
from tests.servers.keystone import keystone_server  # noqa: E402
from tests.test_gateway_signing import running  # noqa: E402

PROJECT = "bench"
INSTANCE = "0f0e0d0c-0b0a-4909-8807-060504030201"
KEY_TYPE = "ECC_SECP384R1"


class Here(DomainLookup):
    def __init__(self, project_id: str) -> None:
        self.project_id = project_id

    async def find(self, instance_uuid: str) -> DomainInfo | None:
        return DomainInfo(instance_uuid, "running", self.project_id)


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


def _evict(path: Path) -> None:
    with open(path, "rb") as handle:
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def _create(url: str, headers: dict, **properties: str) -> str:
    response = requests.post(f"{url}/v2/images", headers=headers, timeout=60,
                             json={"name": "bench", "disk_format": "raw", "container_format": "bare", **properties})
    response.raise_for_status()
    return str(response.json()["id"])


def _put(url: str, headers: dict, image_id: str, path: Path, what: str = "file") -> None:
    with open(path, "rb") as data:
        response = requests.put(f"{url}/v2/images/{image_id}/{what}", data=data, timeout=3600,
                                headers={**headers, "Content-Type": "application/octet-stream"})
    if response.status_code != 204:
        raise RuntimeError(f"PUT {what}: {response.status_code} {response.text[:300]}")


def _wait_active(url: str, headers: dict, image_id: str) -> None:
    while True:
        status = requests.get(f"{url}/v2/images/{image_id}", headers=headers, timeout=60).json()["status"]
        if status == "active":
            return
        if status in ("killed", "deleted", "queued"):
            raise RuntimeError(f"import ended {status}")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1G")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--json", nargs="?", const="-", default=None)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", file=sys.stderr)

    from imgsign.gateway.host_key import CastellanProjects, HostSigner
    from imgsign.gateway.server import Gateway
    from imgsign.keymanager.config import load

    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=args.dir, prefix="imgsign-gw-bench-")))
        keystone = stack.enter_context(keystone_server(root / "keystone"))
        keystore = root / "keystore.sqlite3"
        glance = stack.enter_context(glance_server(root / "glance", keystone=keystone, keystore=keystore))
        project_id = keystone.project_user(PROJECT).project_id
        conf = root / "imgsign.conf"
        conf.write_text(f"[key_manager]\nbackend = imgsign\n\n[imgsign_embedded]\npath = {keystore}\n")
        oslo = load(str(conf))
        signer = HostSigner(SigningConfig(key=str(key_of(KEY_TYPE)), certificate=str(cert_of(KEY_TYPE)),
                                          host="bench-host", import_timeout=3600), oslo)
        gateway = Gateway(GatewayConfig(glance_url=glance.url, read_timeout=3600), signer=signer,
                          domains=Here(project_id), keys=CastellanProjects(oslo))
        gateway_url = stack.enter_context(running(gateway))
        image = root / "image.raw"
        with open(image, "wb") as handle:
            left = _size(args.size)
            while left:
                piece = os.urandom(min(left, 1 << 24))
                handle.write(piece)
                left -= len(piece)

        def plain_put() -> None:
            headers = glance.headers(PROJECT)
            _put(glance.url, headers, _create(glance.url, headers), image)

        def plain_direct() -> None:
            headers = glance.headers(PROJECT)
            image_id = _create(glance.url, headers)
            _put(glance.url, headers, image_id, image, "stage")
            response = requests.post(f"{glance.url}/v2/images/{image_id}/import", headers=headers, timeout=60,
                                     json={"method": {"name": "glance-direct"}})
            response.raise_for_status()
            _wait_active(glance.url, headers, image_id)

        def through_gateway() -> None:
            headers = glance.headers(PROJECT)
            image_id = _create(glance.url, headers, image_type="snapshot", instance_uuid=INSTANCE)
            _put(gateway_url, headers, image_id, image)

        runs = {"plain PUT /file": plain_put, "plain glance-direct": plain_direct, "gateway": through_gateway}
        times: dict[str, list[float]] = {name: [] for name in runs}
        order = list(runs)
        for round_number in range(args.rounds):
            for name in order[round_number % len(order):] + order[:round_number % len(order)]:
                _evict(image)
                start = time.perf_counter()
                runs[name]()
                times[name].append(time.perf_counter() - start)
        base = statistics.median(times["plain PUT /file"])
        result = {name: {"seconds": statistics.median(values), "ratio": statistics.median(values) / base}
                  for name, values in times.items()}
        result["_"] = {"size": _size(args.size), "rounds": args.rounds, "loadavg": os.getloadavg()[0]}
        for name, row in result.items():
            if name != "_":
                print(f"{name:22} {row['seconds']:8.2f} s  x{row['ratio']:.2f}")
        if args.json:
            text = json.dumps(result, indent=2)
            if args.json == "-":
                print(text)
            else:
                Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
