"""``imgsign gateway``: a signing Glance endpoint on each compute host (issue 23).

nova-compute uploads the images it creates (snapshots, backups, shelve) through it; the gateway signs
those it can vouch for with the host's key and attaches a provenance statement (built and checked by
the core's :mod:`imgsign.provenance`, which verifiers use too).
"""
