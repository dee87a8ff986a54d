"""``imgsign gateway``: a signing Glance endpoint on each compute host (issue 23).

nova-compute uploads the images it creates (snapshots, backups, shelve) through it; the gateway signs
those it can vouch for with the host's key and attaches a provenance statement.  The pure core
(:mod:`imgsign.gateway.provenance`) builds and checks the statement; I/O lives in the other modules.
"""
