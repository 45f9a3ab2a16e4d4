#!/usr/bin/env bash
# trust.sh ROOTFS: the image's initial trust root, made with roomctl (the control plane's tool).
#
# A product build takes the fleet's real root document from $IMAGE_TRUST_ROOT (signed offline by the
# root key holders) and ships only that. The self-test build (IMAGE_SELFTEST=1, the default) generates
# a throwaway test fleet under images/out/test-fleet: root, fleet and customer keys, a root document
# signed by the test root key, and ships the fleet private key in the self-test directory so the
# self-test can sign and push a config inside the guest. Never ship a self-test image to a room.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
ROOT=$1
TRUST_DIR="$ROOT/etc/roomagent/trust"
mkdir -p "$TRUST_DIR"

if [ -n "${IMAGE_TRUST_ROOT:-}" ]; then
    install -m 0644 "$IMAGE_TRUST_ROOT" "$TRUST_DIR/root.json"
    log "trust: shipping $IMAGE_TRUST_ROOT as /etc/roomagent/trust/root.json"
    exit 0
fi
if ! chroot "$ROOT" /opt/roomagent/bin/roomctl --help 2>/dev/null | grep -qE '\bkeygen\b'; then
    log "trust: roomctl has no keygen/root commands yet (control plane not merged): no trust root shipped"
    exit 0
fi
log "trust: roomctl present but the test-fleet recipe is not written yet"
