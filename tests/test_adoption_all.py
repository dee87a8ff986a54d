"""``imgsign boot adopt --all``: every base Nova downloaded, in one run, with a summary.

Real images (qemu-img), properties as ``openstack image show -f json`` files or as one mapping file.
No Glance runs here, so Nova's download is a stand-in replayed as the ``nova`` user
(tests/test_adoption.py's ``nova_download``); Nova 34's own ``fetch_to_raw`` fills ``_base`` from a real
glance-api in tests/test_hook_self_adoption.py and tests/test_libvirt_nova.py.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from imgsign import errors
from imgsign.compute.trust_record import RecordStore, cache_name
from tests.conftest import cert_of, run_cli
from tests.test_adoption import (  # noqa: F401 - the host fixture
    NOBODY,
    adopt,
    as_nova,
    assert_nothing_recorded,
    boots_fast,
    host,
    make_image,
    nova_download,
    signed_image,
)
from tests.test_boot_hook import Host


def downloaded(host: Host, fmt: str, pattern: str = "0x4f") -> tuple[str, dict]:
    """A signed image Nova downloaded into _base: (image id, its `openstack image show -f json` output)."""
    image, props = signed_image(host, fmt, pattern)
    image_id = str(uuid.uuid4())
    nova_download(host, image_id, image)
    return image_id, {"id": image_id, "name": f"image-{fmt}", "disk_format": fmt,
                      "properties": json.loads(props.read_text())}


def show_directory(host: Host, *shown: dict) -> Path:
    directory = host.tmp / f"shown-{uuid.uuid4()}"
    directory.mkdir()
    for document in shown:
        (directory / f"{document['id']}.json").write_text(json.dumps(document))
    (directory / "README.txt").write_text("not JSON, not read")
    return directory


def adopt_all(host: Host, properties: Path, *extra: object):
    return run_cli("boot", "adopt", "--all", "--properties", properties, "--cert", cert_of("RSA-PSS"),
                   "--instances-path", host.instances, "--state-dir", host.state, *extra)


def nova_side_files(host: Host) -> list[str]:
    """What else Nova keeps in _base: ephemeral and swap disks, a download and a conversion in progress, locks."""
    base = host.instances / "_base"
    names = ["ephemeral_1_40d1d2c", "swap_512", f"{cache_name('x')}.part", f"{cache_name('y')}.converted"]
    for name in names:
        as_nova('head -c 4096 /dev/zero > "$1"', base / name)
    as_nova('mkdir "$1"', base / "locks")
    return sorted([*names, "locks"])


def test_every_base_is_adopted_or_skipped_and_a_tampered_one_is_refused_alone(host):
    raw_id, raw_shown = downloaded(host, "raw")
    qcow2_id, qcow2_shown = downloaded(host, "qcow2")
    sealed_id, sealed_shown = downloaded(host, "raw", "0x33")
    tampered_id, tampered_shown = downloaded(host, "qcow2", "0x44")
    sealed_props = host.tmp / "sealed.json"
    sealed_props.write_text(json.dumps(sealed_shown))
    assert adopt(host, sealed_id, sealed_props).code == 0
    tampered_base = host.base(tampered_id)
    as_nova("printf 'X' | dd of=\"$1\" bs=1 seek=1048576 conv=notrunc status=none", tampered_base)
    skipped = nova_side_files(host)

    result = adopt_all(host, show_directory(host, raw_shown, qcow2_shown, sealed_shown, tampered_shown), "--json")
    assert result.code == errors.InvalidSignature.exit_code, result  # the one refusal's own code
    summary = result.json()
    by_name = {entry["name"]: entry for entry in summary["bases"]}
    assert by_name[cache_name(raw_id)] == {"name": cache_name(raw_id), "status": "adopted", "image_id": raw_id,
                                               "format": "raw", "source_format": "raw"}
    assert by_name[cache_name(qcow2_id)]["status"] == "adopted"
    assert by_name[cache_name(qcow2_id)]["source_format"] == "qcow2"
    assert by_name[cache_name(sealed_id)]["status"] == "already-sealed"
    refused = by_name[cache_name(tampered_id)]
    assert refused["status"] == "refused" and refused["image_id"] == tampered_id
    assert refused["exit_code"] == errors.InvalidSignature.exit_code and refused["reason"] == "invalid-signature"
    assert "not the raw conversion its raw-digest statement names" in refused["message"]
    assert sorted(name for name, entry in by_name.items() if entry["status"] == "skipped") == skipped
    assert by_name["locks"]["what"] == "lock file" and "swap" in by_name["swap_512"]["what"]
    assert summary["totals"] == {"adopted": 2, "already-sealed": 1, "refused": 1, "skipped": 5}
    assert summary["exit_code"] == errors.InvalidSignature.exit_code
    # One progress line per file on stderr, then the error.
    lines = result.stderr.splitlines()
    assert len([line for line in lines if line.startswith("imgsign: [")]) == 9, result.stderr
    assert "imgsign: [1/9]" in lines[0]
    assert any(f"_base/{cache_name(tampered_id)}: refused (31 invalid-signature)" in line for line in lines)
    assert lines[-1] == "imgsign: error: 1 base(s) refused"

    assert_nothing_recorded(host, tampered_id)
    for name in skipped:  # Nova's other files are left as they were
        assert (host.instances / "_base" / name).stat().st_uid == NOBODY
    for image_id in (raw_id, qcow2_id, sealed_id):
        boots_fast(host, image_id)


def test_mixed_refusals_exit_65_and_a_base_without_properties_is_refused(host):
    good_id, good_shown = downloaded(host, "qcow2")
    changed_id, changed_shown = downloaded(host, "raw")
    as_nova("printf 'X' | dd of=\"$1\" bs=1 seek=4096 conv=notrunc status=none", host.base(changed_id))
    unsigned_id = str(uuid.uuid4())
    nova_download(host, unsigned_id, make_image(host, "raw"))
    unknown_id, _ = downloaded(host, "raw", "0x55")
    mapping = host.tmp / "images.json"  # image id -> properties (show output or the properties themselves)
    mapping.write_text(json.dumps({good_id: good_shown, changed_id: changed_shown["properties"],
                                   unsigned_id: {"os_distro": "debian"}}))

    result = adopt_all(host, mapping, "--json")
    assert result.code == errors.AdoptionIncomplete.exit_code == 65, result
    by_id = {entry["image_id"]: entry for entry in result.json()["bases"]}
    assert by_id[good_id]["status"] == "adopted"
    assert (by_id[changed_id]["status"], by_id[changed_id]["exit_code"]) == ("refused", 31)
    assert (by_id[unsigned_id]["status"], by_id[unsigned_id]["exit_code"]) == ("refused", 60)
    no_properties = next(e for e in result.json()["bases"] if e["name"] == cache_name(unknown_id))
    assert no_properties["status"] == "refused" and no_properties["image_id"] is None
    assert no_properties["exit_code"] == errors.InputError.exit_code
    assert "no properties were given" in no_properties["message"]
    assert result.stderr.splitlines()[-1] == "imgsign: error: 3 base(s) refused for different reasons"
    for image_id in (changed_id, unsigned_id, unknown_id):
        assert_nothing_recorded(host, image_id)
    boots_fast(host, good_id)


def test_all_fine_is_0_and_a_second_run_finds_every_base_sealed(host):
    shown = [downloaded(host, fmt)[1] for fmt in ("raw", "qcow2")]
    properties = show_directory(host, *shown)
    first = adopt_all(host, properties)
    assert first.code == 0, first
    assert first.stdout.strip().startswith("adopted 2, already sealed 0, refused 0, skipped 0 (of 2 files in ")
    records = {doc["id"]: (host.state / "records" / f"{cache_name(doc['id'])}.json").read_bytes() for doc in shown}
    # Later runs need no properties for sealed bases: their records name the images.
    empty = host.tmp / "none.json"
    empty.write_text("{}")
    again = adopt_all(host, empty, "--json")
    assert again.code == 0, again
    assert again.json()["totals"] == {"adopted": 0, "already-sealed": 2, "refused": 0, "skipped": 0}
    assert {doc["id"]: (host.state / "records" / f"{cache_name(doc['id'])}.json").read_bytes()
            for doc in shown} == records
    assert RecordStore(str(host.state)).get(shown[0]["id"]) is not None


def test_an_empty_cache_is_fine(host):
    empty = host.tmp / "none.json"
    empty.write_text("{}")
    result = adopt_all(host, empty, "--json")
    assert result.code == 0 and result.json()["bases"] == [] and result.json()["exit_code"] == 0, result


def test_bad_properties_input_stops_before_any_base_is_touched(host):
    image_id, shown = downloaded(host, "raw")
    cases = {
        "mismatch.json": json.dumps({str(uuid.uuid4()): shown}),  # the document is another image
        "list.json": json.dumps([shown]),
        "not-an-object.json": json.dumps({image_id: "properties"}),
        "bad.json": "{",
    }
    for name, text in cases.items():
        path = host.tmp / name
        path.write_text(text)
        result = adopt_all(host, path)
        assert result.code == errors.InputError.exit_code, (name, result)
        assert "imgsign: [" not in result.stderr, result
    twice = show_directory(host, shown)
    (twice / "copy.json").write_text(json.dumps(shown))
    result = adopt_all(host, twice)
    assert result.code == errors.InputError.exit_code and "given twice" in result.stderr, result
    no_id = show_directory(host)
    (no_id / "props.json").write_text(json.dumps(shown["properties"]))
    result = adopt_all(host, no_id)
    assert result.code == errors.InputError.exit_code and "has no image \"id\"" in result.stderr, result
    assert_nothing_recorded(host, image_id)
    assert os.stat(host.base(image_id)).st_uid == NOBODY


def test_all_and_a_base_exclude_each_other(host):
    image_id, shown = downloaded(host, "raw")
    properties = show_directory(host, shown)
    both = run_cli("boot", "adopt", image_id, "--all", "--properties", properties, "--state-dir", host.state)
    assert both.code == 2 and "--all adopts every base" in both.stderr, both
    neither = run_cli("boot", "adopt", "--properties", properties, "--state-dir", host.state)
    assert neither.code == 2 and "or --all" in neither.stderr, neither
