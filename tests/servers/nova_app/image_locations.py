"""Print the locations Nova sees for an image, as the libvirt driver's RBD paths ask for them.

Usage: NOVA_AUTH_TOKEN=... image_locations.py NOVA_CONF PROJECT_ID IMAGE_ID

Nova 34's own code (in Nova's venv): ``nova.image.glance.API().get(ctx, id, include_locations=True)``, the
call ``Rbd.clone`` (to boot) and ``Rbd._get_parent_pool`` (to snapshot directly) make; with no location
in the same Ceph cluster both raise ``ImageUnacceptable`` and Nova downloads the image / uploads the
snapshot.  Prints one JSON line: ``{"locations": [url, ...]}``.
"""

import json
import logging
import os
import sys


def main(conf: str, project_id: str, image_id: str) -> int:
    import nova.conf
    from nova import context, objects
    from nova.image import glance

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    nova.conf.CONF(["--config-file", conf], project="nova")
    objects.register_all()
    ctx = context.RequestContext(user_id="imgsign-test-user", project_id=project_id, roles=["member"],
                                 auth_token=os.environ["NOVA_AUTH_TOKEN"])
    image = glance.API().get(ctx, image_id, include_locations=True)
    print(json.dumps({"locations": [location.get("url") for location in image.get("locations", [])]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
