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
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter("imgsign-gateway: %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    serve(config)


class _OneLineFormatter(logging.Formatter):
    """Each message on one line, its foreign parts (request paths, Glance's answers, image properties) made
    safe for a terminal and a log reader: no line break can forge a log line (a traceback still follows)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        from imgsign._internal.untrusted import one_line

        record.message = one_line(record.message, limit=4000)
        return super().formatMessage(record)
