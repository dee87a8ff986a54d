"""Play a Nova/Glance host: verify images with cursive, configured by a config file only.

Usage: python cursive_host.py CONFIG_FILE JOBS_JSON
CONFIG_FILE is an oslo.config file with ``[key_manager] backend = ...``, read into
the global ``cfg.CONF`` exactly as a service does; cursive then reaches the key
manager through ``castellan.key_manager.API()`` with no patching.  JOBS_JSON is a
list of {"image": path, "properties": {...}, "project_id": "...", "trusted": [ids]};
with "trusted", cursive's ``verify_certificate`` first validates the signer's
certificate against those certificate ids, as Nova does with
``trusted_image_certificates``.  Prints one JSON result per job: "ok",
"InvalidSignature", "SignatureVerificationError: <reason>" or
"CertificateValidationError: <reason>".
"""

from __future__ import annotations

import json
import sys

from cryptography.exceptions import InvalidSignature
from oslo_config import cfg
from oslo_context import context as oslo_context

from cursive import certificate_utils, signature_utils
from cursive import exception as cursive_exception


def verify(job: dict) -> str:
    props = job["properties"]
    context = oslo_context.RequestContext(project_id=job.get("project_id", "demo"))
    try:
        if "trusted" in job:
            certificate_utils.verify_certificate(
                context=context,
                certificate_uuid=props["img_signature_certificate_uuid"],
                trusted_certificate_uuids=job["trusted"],
            )
        verifier = signature_utils.get_verifier(
            context=context,
            img_signature_certificate_uuid=props["img_signature_certificate_uuid"],
            img_signature_hash_method=props["img_signature_hash_method"],
            img_signature=props["img_signature"],
            img_signature_key_type=props["img_signature_key_type"],
        )
        with open(job["image"], "rb") as handle:
            while chunk := handle.read(1 << 20):
                verifier.update(chunk)
        verifier.verify()
    except InvalidSignature:
        return "InvalidSignature"
    except cursive_exception.SignatureVerificationError as exc:
        return f"SignatureVerificationError: {exc}"
    except cursive_exception.CertificateValidationError as exc:
        return f"CertificateValidationError: {exc}"
    return "ok"


def main() -> None:
    config_file, jobs_file = sys.argv[1], sys.argv[2]
    cfg.CONF(args=[], project="nova", default_config_files=[config_file])
    with open(jobs_file) as handle:
        jobs = json.load(handle)
    print(json.dumps([verify(job) for job in jobs]))


if __name__ == "__main__":
    main()
