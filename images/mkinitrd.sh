#!/usr/bin/env bash
# mkinitrd.sh ROOTFS KVER OUT: the small initrd (busybox + root-disk modules) of the room-system image.
set -euo pipefail
ROOT=$1 KVER=$2 OUTFILE=$3
MODDIR="$ROOT/lib/modules/$KVER"
# What mounting /dev/vda as ext4 needs; builtins (modules.builtin) are skipped, dependencies added.
WANTED="virtio_pci virtio_blk ext4 crc32c_generic"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin" "$work/lib/modules"
if ldd /bin/busybox >/dev/null 2>&1; then
    echo "mkinitrd: /bin/busybox is dynamically linked: apt-get install busybox-static" >&2; exit 1
fi
cp /bin/busybox "$work/bin/busybox"
install -m 0755 "$(dirname "$0")/initrd/init" "$work/init"

python3 - "$MODDIR" "$work" $WANTED <<'PY'
import lzma, pathlib, shutil, sys, zlib
moddir, work, wanted = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3:]
deps = {}
for line in (moddir / "modules.dep").read_text().splitlines():
    path, _, rest = line.partition(":")
    deps[path] = rest.split()
by_name = {pathlib.Path(p).name.split(".ko")[0].replace("-", "_"): p for p in deps}
order: list[str] = []
def visit(path: str) -> None:
    if path in order:
        return
    for dep in reversed(deps[path]):   # modules.dep lists the deepest dependency last
        visit(dep)
    order.append(path)
for name in wanted:
    path = by_name.get(name.replace("-", "_"))
    if path is not None:                # absent: built into this kernel
        visit(path)
lines = []
for path in order:
    src = moddir / path
    name = pathlib.Path(path).name.split(".ko")[0] + ".ko"
    data = src.read_bytes()
    if path.endswith(".xz"):
        data = lzma.decompress(data)
    elif path.endswith(".zst"):
        raise SystemExit("zstd-compressed modules: add a decompressor")
    (work / "lib/modules" / name).write_bytes(data)
    lines.append(name)
(work / "modules.load").write_text("".join(l + "\n" for l in lines))
print("initrd modules:", " ".join(lines))
PY
find "$work" -print0 | xargs -0 touch -h -d "@${SOURCE_DATE_EPOCH:-0}"   # reproducible archive
(cd "$work" && find . -print0 | LC_ALL=C sort -z | cpio --null --create --format=newc --quiet \
    --reproducible --owner=0:0 | gzip -n -9) >"$OUTFILE"
