"""Add a location to an image as the libvirt driver's RBD direct snapshot does, and report Nova's exception.

Usage: NOVA_AUTH_TOKEN=... add_location.py NOVA_CONF PROJECT_ID IMAGE_ID URL

Nova 34's own code (in Nova's venv): ``nova.image.glance.API().update(ctx, id, {"location": URL, ...})``
(glanceclient's ``add_image_location``, ``POST /v2/images/{id}/locations``, then ``add_location``).
Prints one JSON line: ``{"error": "<module.class>" or null, "message": ..., "falls_back": bool,
"fallback_on": [class names]}``, where
``falls_back`` says whether ``LibvirtDriver.snapshot()`` would go on with the standard snapshot after
that exception: its ``except`` clause around ``direct_snapshot()`` catches ``NotImplementedError``,
``exception.ImageUnacceptable`` and ``exception.Forbidden`` (nova/virt/libvirt/driver.py, read here from
the installed source so that a change in Nova shows).
"""

import json
import logging
import re
import sys


def fallback_classes():
    import inspect

    from nova import exception
    from nova.virt.libvirt import driver

    source = inspect.getsource(driver)
    clause = re.search(r"root_disk\.direct_snapshot\(.*?except \(([^)]*)\) as e:", source, re.S)
    if clause is None:
        raise SystemExit("cannot find the except clause around direct_snapshot() in Nova's libvirt driver")
    names = [name.strip() for name in clause.group(1).split(",") if name.strip()]
    classes = []
    for name in names:
        classes.append(NotImplementedError if name == "NotImplementedError"
                       else getattr(exception, name.removeprefix("exception.")))
    return tuple(classes)


def main(conf: str, project_id: str, image_id: str, url: str) -> int:
    import os

    import nova.conf
    from nova import context, objects
    from nova.image import glance

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    nova.conf.CONF(["--config-file", conf], project="nova")
    objects.register_all()
    ctx = context.RequestContext(user_id="imgsign-test-user", project_id=project_id, roles=["member"],
                                 auth_token=os.environ["NOVA_AUTH_TOKEN"])
    classes = fallback_classes()
    metadata = {"disk_format": "raw", "container_format": "bare", "properties": {}, "location": url}
    try:
        glance.API().update(ctx, image_id, metadata, purge_props=False)
    except Exception as exc:  # noqa: BLE001 - reported to the test
        print(json.dumps({"error": f"{type(exc).__module__}.{type(exc).__name__}", "message": str(exc)[:300],
                          "falls_back": isinstance(exc, classes), "fallback_on": [c.__name__ for c in classes]}))
        return 0
    print(json.dumps({"error": None, "message": "", "falls_back": False,
                      "fallback_on": [c.__name__ for c in classes]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
