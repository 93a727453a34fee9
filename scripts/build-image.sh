#!/usr/bin/env bash
# Builds the local test image flotilla/busybox:latest from Debian's
# busybox-static package (no registry is reachable on our machines):
# a root filesystem with /bin/busybox and its applets (sh, httpd, wget,
# nslookup, sleep, ...), imported with `docker import`.
#
#   scripts/build-image.sh          # builds only if the image is missing
#   scripts/build-image.sh --force  # rebuilds
set -euo pipefail
IMAGE=flotilla/busybox:latest
if ! docker version >/dev/null 2>&1; then
  echo "build-image: no Docker engine answers; nothing to build" >&2
  exit 1
fi
if [ "${1:-}" != "--force" ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  exit 0
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
if ! ls /var/cache/apt/archives/busybox-static_*.deb >/dev/null 2>&1; then
  apt-get update -qq >&2 || true
fi
apt-get download busybox-static >&2 2>/dev/null || cp /var/cache/apt/archives/busybox-static_*.deb . 
DEB=$(ls busybox-static_*.deb | head -n 1)
mkdir -p pkg rootfs/bin rootfs/tmp rootfs/etc rootfs/www
dpkg-deb -x "$DEB" pkg
cp pkg/bin/busybox rootfs/bin/busybox
for applet in $(rootfs/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -sf busybox "rootfs/bin/$applet"
done
echo 'root:x:0:0:root:/root:/bin/sh' > rootfs/etc/passwd
echo 'root:x:0:' > rootfs/etc/group
echo 'flotilla' > rootfs/www/index.html
tar -C rootfs -c . | docker import --change 'CMD ["sh"]' --change 'ENV PATH=/bin' - "$IMAGE" >/dev/null
echo "build-image: built $IMAGE" >&2
