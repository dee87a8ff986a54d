"""Run Nova 34's own image download, ``nova.virt.images.fetch_to_raw``, once (in Nova's venv).

Usage: fetch.py NOVA_CONF PROJECT IMAGE_ID DEST

``NOVA_CONF`` is a nova.conf: ``[glance] api_servers`` (the test glance-api),
``verify_glance_signatures``, ``[DEFAULT] force_raw_images`` and the castellan
``[key_manager]`` Nova's signature check fetches the certificate through. The request
context is a user of PROJECT whose token the test Glance's ``token-identity`` filter
maps to that project (tests/servers/glance_app/token_identity.py). Nova's log
(INFO and up) goes to stderr. Exits 0 when Nova wrote DEST; otherwise prints Nova's
exception (class and message) and exits 1.
"""

import logging
import sys


def main(conf: str, project: str, image_id: str, dest: str) -> int:
    import nova.conf
    from nova import context, objects
    from nova.virt import images

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    nova.conf.CONF(["--config-file", conf], project="nova")
    objects.register_all()
    ctx = context.RequestContext(user_id=f"user-of-{project}", project_id=project, roles=["admin", "member"],
                                 auth_token=f"imgsign-test:{project}:admin,member")
    try:
        images.fetch_to_raw(ctx, image_id, dest)
    except Exception as exc:  # noqa: BLE001 - reported to the test, which asserts on it
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
