"""What the Glance commands share: ``--os-cloud`` and the Glance client it leads to."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from imgsign._internal.glance_api import GlanceClient


def cloud_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--os-cloud`` and ``--os-region-name``, as the ``openstack`` CLI has them."""
    func = click.option("--os-region-name", "os_region_name", metavar="REGION",
                        help="Region of the image service (default: the cloud's, or $OS_REGION_NAME).")(func)
    return click.option("--os-cloud", "os_cloud", metavar="CLOUD",
                        help="Cloud in clouds.yaml (default: $OS_CLOUD, else the OS_* variables).")(func)


def glance_client(cloud: str | None, region_name: str | None) -> GlanceClient:
    """A Glance client authenticated as the ``openstack`` CLI would be for these options."""
    from imgsign._internal.openstack_auth import session_from_cloud

    return session_from_cloud(cloud, region_name=region_name).glance()
