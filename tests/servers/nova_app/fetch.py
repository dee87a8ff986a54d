"""Run Nova 34's own image download, ``nova.virt.images.fetch_to_raw``, once (in Nova's venv).

Usage: NOVA_AUTH_TOKEN=... fetch.py NOVA_CONF PROJECT_ID IMAGE_ID DEST [fetch_to_raw|fetch_raw_image]

``NOVA_CONF`` is a nova.conf: ``[glance] api_servers`` (the test glance-api),
``verify_glance_signatures``, ``[DEFAULT] force_raw_images`` and the castellan
``[key_manager]`` Nova's signature check fetches the certificate through. The request
context carries the Keystone token of ``NOVA_AUTH_TOKEN`` (Glance validates it with
Keystone) and its project id PROJECT_ID (castellan reads the certificate as that
project). ``fetch_raw_image`` is how Nova's libvirt driver caches a kernel or ramdisk
(``nova.virt.libvirt.utils``). Nova's log
(INFO and up) goes to stderr. Exits 0 when Nova wrote DEST; otherwise prints Nova's
exception (class and message) and exits 1.
"""

import logging
import sys


def main(conf: str, project_id: str, image_id: str, dest: str, function: str = "fetch_to_raw") -> int:
    import os

    import nova.conf
    from nova import context, objects
    from nova.virt import images
    from nova.virt.libvirt import utils

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    nova.conf.CONF(["--config-file", conf], project="nova")
    objects.register_all()
    ctx = context.RequestContext(user_id="imgsign-test-user", project_id=project_id, roles=["member"],
                                 auth_token=os.environ["NOVA_AUTH_TOKEN"])
    try:
        if function == "fetch_raw_image":
            utils.fetch_raw_image(ctx, dest, image_id)
        else:
            images.fetch_to_raw(ctx, image_id, dest)
    except Exception as exc:  # noqa: BLE001 - reported to the test, which asserts on it
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:6]))
