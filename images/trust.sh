#!/usr/bin/env bash
# trust.sh ROOTFS: the image's initial trust root, made with roomctl (the control plane's tool).
#
# A product build takes the fleet's real root document from $IMAGE_TRUST_ROOT (signed offline by the
# root key holders) and ships only that. The self-test build (IMAGE_SELFTEST=1, the default) generates
# a throwaway test fleet under images/out/test-fleet: root, fleet and customer keys, a root document
# signed by the test root key, and ships the fleet and customer private keys in the self-test directory
# so the self-test can enroll the room in a roster, sign and push a config inside the guest. Never ship
# a self-test image to a room.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
ROOT=$1
TRUST_DIR="$ROOT/etc/roomagent/trust"
mkdir -p "$TRUST_DIR"

trust_config() {
    printf '\n[trust]\n# The initial trust root (trust on first boot); rotations are stored under the state directory.\nroot = "/etc/roomagent/trust/root.json"\n' \
        >>"$ROOT/etc/roomagent/agent.toml"
}

if [ -n "${IMAGE_TRUST_ROOT:-}" ]; then
    install -m 0644 "$IMAGE_TRUST_ROOT" "$TRUST_DIR/root.json"
    trust_config
    log "trust: shipping $IMAGE_TRUST_ROOT as /etc/roomagent/trust/root.json"
    exit 0
fi
if [ "${IMAGE_SELFTEST:-1}" != 1 ]; then
    log "trust: no IMAGE_TRUST_ROOT given: the product image ships without a trust root (every document rejected)"
    exit 0
fi
if ! chroot "$ROOT" /opt/roomagent/bin/roomctl --help 2>/dev/null | grep -qE '^ +keygen'; then
    log "trust: roomctl has no keygen/root commands (control plane not in this build): no trust root shipped"
    exit 0
fi
# The installed roomctl makes the test fleet inside the chroot (what ships is what is tested);
# private keys then leave the image, except the fleet key the self-test signs its config push with.
roomctl=(chroot "$ROOT" /opt/roomagent/bin/roomctl)
work=/tmp/test-fleet
rm -rf "$ROOT$work"; mkdir -m 0700 "$ROOT$work"
for role in root fleet customer legal; do
    "${roomctl[@]}" keygen --type ed25519 --out "$work/$role.pem" >/dev/null
done
"${roomctl[@]}" root init --root-key "$work/root.pem.pub.json" --fleet-key "$work/fleet.pem.pub.json" \
    --customer-key "$work/customer.pem.pub.json" --legal-key "$work/legal.pem.pub.json" \
    --sign "$work/root.pem" --expires-days 365 --out /etc/roomagent/trust/root.json >/dev/null
chmod 0644 "$TRUST_DIR/root.json"
install -d -m 0700 "$ROOT/usr/lib/roomagent-selftest/keys"
install -m 0600 "$ROOT$work/fleet.pem" "$ROOT/usr/lib/roomagent-selftest/keys/fleet.pem"
# The customer key enrolls the image in a test roster (roomctl trusts acks only from rostered rooms).
install -m 0600 "$ROOT$work/customer.pem" "$ROOT/usr/lib/roomagent-selftest/keys/customer.pem"
rm -rf "$OUT/test-fleet"; mv "$ROOT$work" "$OUT/test-fleet"
trust_config
log "trust: test fleet in $OUT/test-fleet, its root in /etc/roomagent/trust/root.json (self-test image only)"
