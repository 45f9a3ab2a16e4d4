#!/usr/bin/env bash
# make image: a bootable Debian bookworm room-system image (see docs/image.md).
#
#   1. base     debootstrap --variant=minbase + images/packages.txt, cached under $IMAGE_CACHE keyed by
#               that list, so a rebuild skips straight to step 2 (a few seconds);
#   2. rootfs   copy of the base + the project's units (systemd/) and files (images/rootfs/);
#   3. agent    the project's own wheel and its dependencies' wheels for the guest's CPython 3.11
#               (glibc 2.36: manylinux_2_36 and older), installed OFFLINE into the venv /opt/roomagent
#               inside the chroot, so the venv is built by the guest's own python3;
#   4. trust    a test fleet's keys and initial trust root (roomctl, when the control plane is present);
#   5. disk     ext4 image (mke2fs -d, fixed UUID and hash seed), the kernel unpacked, a small busybox
#               initrd that loads virtio/ext4 and switches to the disk's systemd.
#
# Needs root (chroot), debootstrap, e2fsprogs, busybox-static, and PyPI access for step 3 (pip cache).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

[ "$(id -u)" = 0 ] || die "make image needs root (debootstrap and chroot)"
for tool in debootstrap mke2fs chroot cpio; do
    command -v "$tool" >/dev/null || die "$tool is missing: apt-get install debootstrap e2fsprogs cpio busybox-static"
done
[ -x /bin/busybox ] || die "/bin/busybox is missing: apt-get install busybox-static"
HOST_PYTHON=${HOST_PYTHON:-python3}

mkdir -p "$IMAGE_CACHE" "$OUT"
exec 9>"$IMAGE_CACHE/.lock"
flock 9   # one build at a time on this machine: they share the cache

t0=$(date +%s)
# ---------------------------------------------------------------------------------------------- 1. base
# BASE-RECIPE-BEGIN (this block is part of the cache key)
BASE="$IMAGE_CACHE/base-$(base_key)"
if [ ! -f "$BASE/.complete" ]; then
    log "debootstrap $SUITE (minbase) into $BASE: first build, about 2 minutes"
    tmp="$IMAGE_CACHE/.base-tmp"
    rm -rf "$tmp"
    pkgs=$(grep -v '^#' "$IMAGES_DIR/packages.txt" | xargs | tr ' ' ',')
    debootstrap --variant=minbase --include="$pkgs" --components=main "$SUITE" "$tmp" "$MIRROR" \
        >"$IMAGE_CACHE/debootstrap.log" 2>&1 || die "debootstrap failed: see $IMAGE_CACHE/debootstrap.log"
    chroot "$tmp" apt-get clean
    rm -rf "$tmp"/var/lib/apt/lists/* "$tmp"/var/cache/debconf/*-old "$tmp"/boot/initrd.img-*
    # Documentation and translations are not needed on a room PC; licences (copyright files) stay.
    find "$tmp/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    rm -rf "$tmp"/usr/share/man/* "$tmp"/usr/share/info/* "$tmp"/usr/share/locale/*
    chroot "$tmp" dpkg-query -W -f '${Package} ${Version}\n' >"$tmp/.packages"
    touch "$tmp/.complete"
    mv "$tmp" "$BASE"
fi
# BASE-RECIPE-END
log "base ready: $BASE ($(( $(date +%s) - t0 )) s)"

# -------------------------------------------------------------------------------------------- 2. rootfs
ROOT="$OUT/rootfs"
log "rootfs: copy of the base into $ROOT"
rm -rf "$ROOT"
cp -a --reflink=auto "$BASE" "$ROOT"
rm -f "$ROOT/.complete"
mv "$ROOT/.packages" "$OUT/packages.txt"
KVER=$(basename "$(ls -d "$ROOT"/lib/modules/* | sort -V | tail -1)")

echo roomagent >"$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\troomagent\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$ROOT/etc/hosts"
# pass 0: the initrd mounted the root read-write already (fsck there would need e2fsck in the initrd).
printf '/dev/vda\t/\text4\trw,noatime\t0\t0\n' >"$ROOT/etc/fstab"
ln -sf /usr/share/zoneinfo/Etc/UTC "$ROOT/etc/localtime"
: >"$ROOT/etc/machine-id"   # empty: systemd generates one on first boot (every device its own)

# The project's units, sysusers/tmpfiles entries and udev rule, where a Debian package would put them.
install -D -m 0644 "$REPO_DIR/systemd/roomagent.service"         "$ROOT/usr/lib/systemd/system/roomagent.service"
install -D -m 0644 "$REPO_DIR/systemd/roomagent.sysusers"        "$ROOT/usr/lib/sysusers.d/roomagent.conf"
install -D -m 0644 "$REPO_DIR/systemd/roomagent.tmpfiles"        "$ROOT/usr/lib/tmpfiles.d/roomagent.conf"
install -D -m 0644 "$REPO_DIR/systemd/70-roomagent-camera.rules" "$ROOT/usr/lib/udev/rules.d/70-roomagent-camera.rules"
install -D -m 0644 "$REPO_DIR/systemd/roomagent-reboot.rules"   "$ROOT/usr/share/polkit-1/rules.d/50-roomagent-reboot.rules"
install -D -m 0644 "$REPO_DIR/docs/image.md"                     "$ROOT/usr/share/doc/roomagent/image.md"
# Image files: the example config; then, unless IMAGE_SELFTEST=0 (a product image), the self-test
# layer: vivid, a loopback Mosquitto, the self-test unit and scripts (and test keys, step 4).
cp -a "$IMAGES_DIR/rootfs/." "$ROOT/"
[ "${IMAGE_SELFTEST:-1}" = 1 ] && cp -a "$IMAGES_DIR/selftest/." "$ROOT/"
systemd-sysusers --root="$ROOT" >/dev/null 2>&1
systemd-tmpfiles --root="$ROOT" --create "$ROOT/usr/lib/tmpfiles.d/roomagent.conf"
chroot "$ROOT" systemctl enable roomagent.service mosquitto.service >/dev/null 2>&1
[ "${IMAGE_SELFTEST:-1}" = 1 ] && chroot "$ROOT" systemctl enable roomagent-selftest.service >/dev/null 2>&1
# Quiet, fast boots: no getty on the console (the serial console shows systemd's status), no timers.
chroot "$ROOT" systemctl mask getty@tty1.service serial-getty@ttyS0.service apt-daily.timer \
    apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer >/dev/null 2>&1 || true

# --------------------------------------------------------------------------------------------- 3. agent
WHEELS="$OUT/wheelhouse"
rm -rf "$WHEELS"; mkdir -p "$WHEELS" "$IMAGE_CACHE/pip"
log "agent: building the project's wheel and fetching its dependencies for cp311/glibc 2.36"
PIP=("$HOST_PYTHON" -m pip --disable-pip-version-check --cache-dir "$IMAGE_CACHE/pip")
"${PIP[@]}" wheel --quiet --no-deps -w "$WHEELS" "$REPO_DIR" >"$OUT/wheel.log" 2>&1 \
    || { cat "$OUT/wheel.log" >&2; die "building the project's wheel failed"; }
WHEEL=$(ls "$WHEELS"/roomagent-*.whl)
# The guest's interpreter: CPython 3.11 on glibc 2.36, which accepts manylinux_2_36 down to
# manylinux_2_5 (older pips do not expand one --platform into that list: name them all). Binary wheels
# only: nothing compiles, so what the guest gets is what PyPI built and tested.
platforms=(); for v in $(seq 36 -1 5); do platforms+=(--platform "manylinux_2_${v}_x86_64"); done
"${PIP[@]}" download --quiet --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 \
    "${platforms[@]}" -d "$WHEELS" "$WHEEL"
log "agent: installing into /opt/roomagent inside the chroot, offline ($(ls "$WHEELS" | wc -l) wheels)"
cp -a "$WHEELS" "$ROOT/tmp/wheelhouse"
chroot "$ROOT" /usr/bin/python3 -m venv /opt/roomagent
chroot "$ROOT" /opt/roomagent/bin/pip install --quiet --disable-pip-version-check --no-index --no-cache-dir \
    --find-links /tmp/wheelhouse roomagent
rm -rf "$ROOT/tmp/wheelhouse"
chroot "$ROOT" /opt/roomagent/bin/roomagent --version >/dev/null || die "the installed agent does not start"
ln -sf /opt/roomagent/bin/roomagent "$ROOT/usr/local/bin/roomagent"
ln -sf /opt/roomagent/bin/roomctl "$ROOT/usr/local/bin/roomctl"

# --------------------------------------------------------------------------------------------- 4. trust
"$IMAGES_DIR/trust.sh" "$ROOT"

# Self-test image: a lab SFrame key and a loopback RTP sink, so the agent started by systemd runs the
# real media path (vivid -> libx264 -> SFrame -> RTP) under the unit's sandbox; a generous health
# check bound for pushed configs (a pipeline restart is slow under emulation). A short GOP: a plain
# RTP sink has no back channel for a keyframe request, and under a loaded emulator the pipeline
# sends 1-2 frames a second, so the product's 60-frame GOP would leave the receiver's window without
# a single keyframe (every frame "skipped until keyframe").
if [ "${IMAGE_SELFTEST:-1}" = 1 ] && chroot "$ROOT" /opt/roomagent/bin/roomagent --help | grep -qE '^ +lab-key'; then
    chroot "$ROOT" /opt/roomagent/bin/roomagent lab-key /etc/roomagent/lab.json >/dev/null
    chroot "$ROOT" chown root:roomagent /etc/roomagent/lab.json
    chmod 0640 "$ROOT/etc/roomagent/lab.json"
    printf '\n# Self-test image only: lab key (no meeting) and a loopback sink.\n[media]\nsink = "rtp://127.0.0.1:5004"\n\n[e2ee]\nlab_key_file = "/etc/roomagent/lab.json"\n\n[hal.encoder]\nkeyframe_interval = 5\n\n[control]\nhealth_timeout_s = 60\n' \
        >>"$ROOT/etc/roomagent/agent.toml"
    log "media: self-test lab key /etc/roomagent/lab.json, sink rtp://127.0.0.1:5004"
fi

# --------------------------------------------------------------------------------------------- 5. disk
log "disk: kernel $KVER, small initrd, ext4 root"
cp "$ROOT/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
ls "$ROOT/lib/modules/$KVER"/kernel/drivers/media/test-drivers/vivid/vivid.ko* >/dev/null 2>&1 \
    || die "this kernel ships no vivid module: the VM test needs it"
# The unpacked ELF kernel for QEMU: it boots through its PVH entry point, without decompressing
# itself under emulation (about 6 s saved per boot under TCG).
python3 - "$OUT/vmlinuz" "$OUT/vmlinux" <<'PY'
import lzma, sys
data = open(sys.argv[1], "rb").read()
offset = data.find(b"\xfd7zXZ\x00")   # Debian's bzImage payload is xz (CONFIG_KERNEL_XZ)
if offset < 0:
    sys.exit("vmlinuz: no xz payload found")
elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[offset:])
if elf[:4] != b"\x7fELF":
    sys.exit("vmlinuz: payload is not an ELF kernel")
open(sys.argv[2], "wb").write(elf)
PY
"$IMAGES_DIR/mkinitrd.sh" "$ROOT" "$KVER" "$OUT/initrd.img"
# Clamp every timestamp for a reproducible file system; fixed UUID and directory hash seed.
find "$ROOT" -newermt "@$SOURCE_DATE_EPOCH" -print0 | xargs -0r touch -h -d "@$SOURCE_DATE_EPOCH"
size_mb=$(( $(du -sm "$ROOT" | cut -f1) * 5 / 4 + 256 ))
rm -f "$OUT/rootfs.ext4"
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH mke2fs -q -t ext4 -L roomroot -U 6b6e2e6c-726f-6f6d-6167-656e74000001 \
    -E hash_seed=6b6e2e6c-726f-6f6d-6167-656e74000002,root_owner=0:0 -d "$ROOT" "$OUT/rootfs.ext4" "${size_mb}M"
used_mb=$(du -sm "$ROOT" | cut -f1)
log "image ready in $(( $(date +%s) - t0 )) s: $OUT/{vmlinux,vmlinuz,initrd.img,rootfs.ext4}; root file system ${used_mb} MB used of ${size_mb} MB"
alloc_mb=$(du -sm "$OUT/rootfs.ext4" | cut -f1)
printf '{"kernel": "%s", "rootfs_used_mb": %s, "rootfs_image_mb": %s, "rootfs_image_allocated_mb": %s, "build_s": %s}\n' \
    "$KVER" "$used_mb" "$size_mb" "$alloc_mb" "$(( $(date +%s) - t0 ))" >"$OUT/image.json"
