"""``imgsign gateway``: the compute host's signing Glance endpoint (the ``gateway`` extra)."""

from __future__ import annotations

import logging
import sys

import click


@click.group("gateway")
def gateway_group() -> None:
    """The signing Glance endpoint nova-compute uses on a compute host."""


@gateway_group.command("serve")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="gateway.conf (default: $IMGSIGN_GATEWAY_CONFIG, /etc/imgsign/gateway.conf).")
def serve_command(config_path: str | None) -> None:
    """Listen on loopback and forward every request to Glance, streaming, until SIGTERM or SIGINT."""
    from imgsign.gateway.config import load_config
    from imgsign.gateway.server import serve

    config = load_config(config_path)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="imgsign-gateway: %(levelname)s %(message)s")
    serve(config)
