"""The Glance image-import plugins' options (``imgsign_verify``, ``imgsign_resign``: :mod:`imgsign.glance.plugin`),
in Glance's own configuration (``glance-image-import.conf`` or ``glance-api.conf``).

This module imports neither Glance nor taskflow, so oslo-config-generator and the docs can list the
options anywhere (namespace ``imgsign.glance_import``).
"""

from __future__ import annotations

from oslo_config import cfg

from imgsign.keymanager.config import transit_opts

GROUP = "imgsign_import"
#: imgsign.conf's ``[transit]`` options, for ``service_key = hashivault://NAME``.
TRANSIT_GROUP = "imgsign_transit"

OPTS = [
    cfg.ListOpt("trusted_certificate_ids", default=[],
                help="Key-manager ids of trusted (CA) certificates. When set, imgsign_verify also requires the "
                     "signing certificate to chain to one of them. Looked up with the importing user's context, "
                     "then with the service context."),
    cfg.StrOpt("policy_file",
               help="Trust policy file (YAML or JSON; imgsign's doc/source/user/trust-policy.md). When set, the rule "
                    "that applies to the image (by its owner, visibility and image_type) decides who may sign it, "
                    "instead of trusted_certificate_ids and require_crls (set one or the other). Its key-manager "
                    "ids are looked up as trusted_certificate_ids are."),
    cfg.BoolOpt("require_signature", default=False,
                help="Refuse images that have no img_signature* properties (default: they pass unchecked)."),
    cfg.BoolOpt("require_crls", default=False,
                help="With trusted_certificate_ids: refuse a chain when an issuer on it has no complete CRL "
                     "in scope (RFC 5280: no delta, partitioned or indirect CRL) in the key manager."),
    cfg.StrOpt("tsa_ca_file",
               help="Trusted TSA certificates (PEM) of the built-in policy (without policy_file): an RFC 3161 "
                    "timestamp token (imgsign_tst_v1) whose TSA chains to one of them is checked, and lets a "
                    "signature whose certificate has since expired pass if it was timestamped while the "
                    "certificate was valid. Under policy_file the rule's tsa trust stores are used instead."),
    cfg.StrOpt("ocsp", default="strict", choices=["strict", "offline", "off"],
               help="OCSP beside CRLs: strict asks the responder a certificate names (after the response stapled "
                    "with the signature, imgsign_ocsp_v1); offline uses only the stapled response (a certificate "
                    "naming a responder then needs a complete CRL); off: CRLs only."),
    cfg.FloatOpt("ocsp_timeout", default=10.0, min=0.1,
                 help="Seconds for one exchange with an OCSP responder."),
    cfg.StrOpt("service_key_id",
               help="imgsign_resign: key-manager id of the deployment's private signing key."),
    cfg.StrOpt("service_key", secret=True,
               help="imgsign_resign: instead of service_key_id, a key that never leaves a hardware token or a "
                    "signing service: a PKCS#11 URI (pkcs11:token=LABEL;object=LABEL?module-path=/path/module.so&"
                    "pin-source=file:/path/pin, the PIN file readable by Glance only) or an OpenBao/Vault transit "
                    "key, hashivault://NAME (configured in [imgsign_transit])."),
    cfg.StrOpt("service_certificate_id",
               help="imgsign_resign: key-manager id of the certificate of service_key_id."),
    cfg.StrOpt("service_project_id",
               help="Project that owns service_key_id and service_certificate_id in the key manager (ignored when "
                    "[key_manager] auth_type gives castellan service credentials)."),
    cfg.BoolOpt("copy_certificate_to_project", default=True,
                help="imgsign_resign: store a copy of the service certificate in the importing project and put that "
                     "copy's id in img_signature_certificate_uuid, so checks made with the user's context (Glance, "
                     "Nova) find it. False: use service_certificate_id as is (it must be readable by every project)."),
]
TRANSIT_OPTS = transit_opts()


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """The plugins' options, for documentation and oslo-config-generator."""
    return [(GROUP, OPTS), (TRANSIT_GROUP, TRANSIT_OPTS)]


def check(conf: cfg.ConfigOpts) -> None:
    """Read every plugin option once (an invalid value is an :class:`~imgsign.errors.InputError` naming it)."""
    from imgsign.conf import check_values

    check_values(conf, None, [GROUP, TRANSIT_GROUP])
