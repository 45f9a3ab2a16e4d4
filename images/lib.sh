# Shared settings of images/build.sh and images/test.sh (sourced, not run).
# shellcheck shell=bash
IMAGES_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$IMAGES_DIR/.." && pwd)
SUITE=${IMAGE_SUITE:-bookworm}
MIRROR=${IMAGE_MIRROR:-http://deb.debian.org/debian}
# Outside the git tree so that a fresh CI clone on the same machine reuses it.
IMAGE_CACHE=${IMAGE_CACHE:-/var/cache/roomagent-image}
OUT=${IMAGE_OUT:-$IMAGES_DIR/out}
# Everything the image build writes carries this time (reproducible builds convention).
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$REPO_DIR" log -1 --format=%ct 2>/dev/null || echo 1764374400)}

log() { printf '[image %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { printf '[image] ERROR: %s\n' "$*" >&2; exit 1; }

# The cache key of the debootstrapped base: suite, mirror, package list and the base recipe itself.
base_key() {
    { echo "$SUITE $MIRROR"; grep -v '^#' "$IMAGES_DIR/packages.txt"; sed -n '/^# BASE-RECIPE-BEGIN/,/^# BASE-RECIPE-END/p' "$IMAGES_DIR/build.sh"; } \
        | sha256sum | cut -c1-16
}
