"""A child process of the concurrency tests: imgsign's command line or the libvirt hook, with faults.

``python tests/fault_child.py`` reads a JSON spec from ``$IMGSIGN_TEST_CHILD``::

    {"faults": [{"target": "imgsign.compute.adoption:_check_still_named", "when": "before",
                 "action": "raise", "seconds": 0}],
     "fetch": {"properties": {"<image id>": {...}}, "certificate": "<PEM file>"},
     "run": ["cli", "boot", "adopt", ...]  or  ["hook", "<domain>", "prepare", "begin"]}

Each fault wraps ``module:attribute`` (``Class.method`` allowed): before or after the real call it
sleeps ``seconds`` (or, with ``until``, until that file exists, ``seconds`` at most) and then
``raise`` (an :class:`~imgsign.errors.InputError`), ``crash`` (a ``RuntimeError``, which no imgsign
handler expects), ``exit`` (``os._exit``: no clean-up at all) or ``sleep`` (only the pause).

``fetch`` replaces the hook's network step (Glance's image record and the key manager's certificate)
with local files: a stand-in, because these tests are about what runs do to the base and the state
directory, not about the network (tests/test_hook_self_adoption.py runs the real Glance and key manager).
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import sys
import time
import types
from typing import Any


def _install(fault: dict[str, Any]) -> None:
    from imgsign.errors import InputError

    module_name, _, attribute = fault["target"].partition(":")
    owner: Any = importlib.import_module(module_name)
    *path, name = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    real = getattr(owner, name)
    when, action, seconds = fault.get("when", "before"), fault.get("action", "raise"), float(fault.get("seconds", 0))

    def fire() -> None:
        if "until" in fault:  # pause until the test creates this file, ``seconds`` at most
            deadline = time.monotonic() + seconds
            while not os.path.exists(fault["until"]) and time.monotonic() < deadline:
                time.sleep(0.01)
        else:
            time.sleep(seconds)
        if action == "raise":
            raise InputError(f"injected fault at {fault['target']} ({when})")
        if action == "crash":
            raise RuntimeError(f"injected crash at {fault['target']} ({when})")
        if action == "exit":
            os._exit(99)

    @functools.wraps(real)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if when == "before":
            fire()
        result = real(*args, **kwargs)
        if when == "after":
            fire()
        return result

    setattr(owner, name, wrapper)


def _stand_in_fetch(fetch: dict[str, Any]) -> None:
    from imgsign.certificates import load_certificate
    from imgsign.compute import self_adoption

    certificate = load_certificate(open(fetch["certificate"], "rb").read())  # noqa: SIM115 - a short-lived child
    images = fetch["properties"]

    def fetched(settings: Any, image_id: str, trusted_ids: Any, stage: list[str], deadline: Any,
                *_more: Any) -> Any:  # trusted files, host-signed provenance, TSA ids: none here
        if image_id not in images:
            from imgsign.errors import ImageNotFound

            raise ImageNotFound(f"no image {image_id} (stand-in Glance)")
        return self_adoption.Fetched({"id": image_id, **images[image_id]}, certificate, None)

    self_adoption._fetch = fetched
    # boot.conf's options as adoption reads them: no TSA file, OCSP off (no responder in these tests).
    options = types.SimpleNamespace(imgsign=types.SimpleNamespace(tsa_ca_file=None, ocsp="off", ocsp_timeout=10.0))
    self_adoption.SelfAdopter.settings = lambda self: self_adoption._Settings(options, 10.0)  # type: ignore


def main() -> None:
    spec = json.loads(os.environ["IMGSIGN_TEST_CHILD"])
    if spec.get("fetch"):
        _stand_in_fetch(spec["fetch"])
    for fault in spec.get("faults", ()):
        _install(fault)
    kind, *argv = spec["run"]
    if kind == "cli":
        from imgsign.cli import main as cli_main

        sys.argv = ["imgsign", *argv]
        cli_main()
    else:
        from imgsign.compute.libvirt_hook import main as hook_main

        try:
            sys.exit(hook_main(argv, sys.stdin.buffer))
        except Exception as exc:  # noqa: BLE001 - as hooks/libvirt-qemu: a refusal, never a traceback
            print(f"imgsign: refusing to start {argv[0]}: internal error {type(exc).__name__}: {exc}", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
