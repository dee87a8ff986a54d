"""Upload a snapshot's data as nova-compute does: ``nova.image.glance.API().update(ctx, id, meta, data)``.

Usage: NOVA_AUTH_TOKEN=... upload.py NOVA_CONF PROJECT_ID IMAGE_ID FILE

Nova 34's own code (in Nova's venv): glanceclient PATCHes the metadata, then ``PUT /v2/images/{id}/file``
with the file, then reads the image back, against ``[glance] api_servers``.  Exits 0 on success;
otherwise prints Nova's exception (class and message) and exits 1.
"""

import logging
import sys


def main(conf: str, project_id: str, image_id: str, path: str) -> int:
    import os

    import nova.conf
    from nova import context, objects
    from nova.image import glance

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    nova.conf.CONF(["--config-file", conf], project="nova")
    objects.register_all()
    ctx = context.RequestContext(user_id="imgsign-test-user", project_id=project_id, roles=["member"],
                                 auth_token=os.environ["NOVA_AUTH_TOKEN"])
    metadata = {"disk_format": "raw", "container_format": "bare", "properties": {}}
    try:
        with open(path, "rb") as data:  # as the libvirt driver's snapshot() hands its extracted file
            glance.API().update(ctx, image_id, metadata, data, purge_props=False)
    except Exception as exc:  # noqa: BLE001 - reported to the test, which asserts on it
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
