"""The OSC plugin module (``openstack.cli.extension``): the client is OSC's Keystone session for Glance."""

from __future__ import annotations

import argparse
import os
from typing import Any

from imgsign._internal.openstack_auth import CloudSession

API_NAME = "imgsign"
API_VERSION_OPTION = "os_imgsign_api_version"
DEFAULT_API_VERSION = "1"
API_VERSIONS = ("1",)


def make_client(instance: Any) -> CloudSession:
    """The session OSC authenticated, with the image service where OSC would find it (region, interface,
    ``image_endpoint_override``)."""
    options = instance._cli_options  # OSC's openstack.config CloudRegion, as its own image commands use
    return CloudSession(instance.session, str(getattr(options, "name", None) or "envvars"),
                        options.get_endpoint("image"), instance.interface, instance.region_name or None)


def build_option_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """OSC's global options: the (only) plugin API version, and imgsign.conf."""
    parser.add_argument("--os-imgsign-api-version", metavar="<imgsign-api-version>",
                        default=os.environ.get("OS_IMGSIGN_API_VERSION"), help=argparse.SUPPRESS)
    parser.add_argument("--imgsign-config", metavar="<path>", default=None,
                        help="imgsign.conf for the image sign/verify/audit commands (key manager, trusted "
                             "certificates; default: $IMGSIGN_CONFIG, /etc/imgsign/imgsign.conf, "
                             "~/.config/imgsign/imgsign.conf)")
    return parser
