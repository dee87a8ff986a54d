"""The sample configuration files in etc/imgsign/ are what oslo-config-generator makes today from the
options imgsign registers under ``oslo.config.opts`` (one namespace per file): regenerate them with
``oslo-config-generator --config-file etc/oslo-config-generator/NAME.conf`` when an option changes."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest
from oslo_config import generator

ROOT = Path(__file__).resolve().parent.parent
GENERATOR_CONFIGS = sorted((ROOT / "etc" / "oslo-config-generator").glob("*.conf"))


def test_every_config_file_has_a_generator_config():
    assert {path.stem for path in GENERATOR_CONFIGS} == {"imgsign", "boot", "glance-image-import", "gateway"}


@pytest.mark.parametrize("config", GENERATOR_CONFIGS, ids=lambda path: path.stem)
def test_the_checked_in_sample_is_what_the_generator_makes(config, tmp_path, monkeypatch):
    settings = configparser.ConfigParser(strict=False)
    settings.read(config)
    sample = ROOT / settings["DEFAULT"]["output_file"]
    made = tmp_path / sample.name
    monkeypatch.chdir(ROOT)
    generator.main(["--config-file", str(config), "--output-file", str(made)])
    assert made.read_text() == sample.read_text(), (
        f"{sample.relative_to(ROOT)} is stale: run oslo-config-generator --config-file "
        f"{config.relative_to(ROOT)}")
