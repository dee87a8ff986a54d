#!/usr/bin/env bash
# The README's first command: install imgsign into .venv, make a signing key,
# sign a sample image (storing the certificate in an embedded key manager, the
# default backend) and verify it, fetching the certificate back by its uuid.
# Safe to re-run: image, key, configuration and key store all live in a scratch
# folder that is removed; your own key store and configuration are not touched.
# IMGSIGN_QUICKSTART_PYTHON=/path/to/python uses an existing installation instead of .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${IMGSIGN_QUICKSTART_PYTHON:-}" ]; then
    python=$IMGSIGN_QUICKSTART_PYTHON
else
    python3 -m venv .venv
    .venv/bin/python -m pip install -q -e .
    python=.venv/bin/python
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/imgsign-quickstart.XXXXXX")
trap 'rm -rf "$work"' EXIT

# A throw-away key store in the scratch folder (-c wins over $IMGSIGN_CONFIG and the default files).
cat > "$work/imgsign.conf" <<CONF
[key_manager]
backend = imgsign

[imgsign_embedded]
path = $work/keystore.sqlite3
CONF
imgsign() { "$python" -m imgsign -c "$work/imgsign.conf" "$@"; }

# A qcow2 image when qemu-img is there; its raw-digest statement (doc/source/specs/raw-digest-statement.md) also needs
# qemu-nbd and nbdcopy (Debian: qemu-utils, libnbd-bin), so without nbdcopy it is skipped.
raw_digest=()
if command -v qemu-img >/dev/null 2>&1; then
    qemu-img create -q -f qcow2 "$work/sample.qcow2" 1G
    image="$work/sample.qcow2"
    command -v nbdcopy >/dev/null 2>&1 || raw_digest=(--no-raw-digest)
else
    head -c 64M /dev/urandom > "$work/sample.img"
    image="$work/sample.img"
fi

# keygen encrypts the private key, as cosign and ssh-keygen do: on a terminal it asks for a passphrase;
# this script is not interactive, so it makes a random one in a file that only you can read.
(umask 077 && head -c 24 /dev/urandom | base64 > "$work/passphrase")
imgsign keygen --key-type RSA-PSS --out-key "$work/signer.key" --out-cert "$work/signer.pem" \
    --passphrase-file "$work/passphrase" --subject "CN=imgsign quickstart signer"
imgsign sign "$image" --key "$work/signer.key" --passphrase-file "$work/passphrase" --cert "$work/signer.pem" \
    --store-cert "${raw_digest[@]}" | tee "$work/properties.json"
echo
imgsign verify "$image" --properties "$work/properties.json"
