"""Nova 34's verdict on image files: ``nova.virt.images.fetch_to_raw`` after its download (in Nova's venv).

Usage: verdicts.py NOVA_CONF WORKDIR < cases.json > verdicts.json

``cases.json`` is a list of ``{"path": ..., "disk_format": ...}``. For each, Nova's own
``fetch_to_raw`` runs with two stand-ins for Glance: ``images.fetch`` copies ``path`` to Nova's
``.part`` file (the bytes Glance would serve) and ``IMAGE_API.get`` returns the image's
``disk_format``. Everything after the download is Nova's code: deep format inspection
(``format_inspector``), ``qemu-img info`` and its checks, conversion under ``force_raw_images``.
Prints a list of ``{"accepted": bool, "error": "ExceptionClass: message"}``.
"""

import json
import logging
import os
import shutil
import sys


def main(conf: str, workdir: str) -> int:
    import nova.conf
    from nova import context, objects
    from nova.virt import images

    logging.basicConfig(level=logging.CRITICAL, stream=sys.stderr)
    nova.conf.CONF(["--config-file", conf], project="nova")
    objects.register_all()
    ctx = context.RequestContext(user_id="imgsign-test-user", project_id="p", roles=["member"])
    verdicts = []
    for index, case in enumerate(json.load(sys.stdin)):
        images.fetch = lambda _ctx, _href, path, trusted_certs=None, src=case["path"]: shutil.copyfile(src, path)
        images.IMAGE_API.get = lambda _ctx, _href, fmt=case["disk_format"]: {"disk_format": fmt}
        dest = os.path.join(workdir, f"base-{index}")
        try:
            images.fetch_to_raw(ctx, f"image-{index}", dest)
        except Exception as exc:  # noqa: BLE001 - the verdict, reported to the test
            verdicts.append({"accepted": False, "error": f"{type(exc).__name__}: {exc}"})
        else:
            verdicts.append({"accepted": True, "error": None})
    json.dump(verdicts, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
