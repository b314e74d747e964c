#!/bin/sh
# A Debian bookworm base image made locally, for machines that reach a Debian mirror but no
# image registry: debootstrap (minbase) from the mirror of this machine's own apt sources,
# then `podman import`. Idempotent: the image is kept, and the root filesystem's tarball is
# cached, so a machine that lost its images re-imports it in seconds.
#
#   scripts/containers/base_image.sh             # prints the image's name
#   MOE_BASE_IMAGE=localhost/other:tag ...       # another name
set -eu

IMAGE=${MOE_BASE_IMAGE:-localhost/debian:bookworm-minbase}
CACHE=${MOE_CONTAINER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/moe-triton/containers}
TARBALL=$CACHE/debian-bookworm-minbase.tar

if podman image exists "$IMAGE"; then
    echo "$IMAGE"
    exit 0
fi

if [ ! -s "$TARBALL" ]; then
    # The first deb URI of the machine's apt sources (deb822 or one-line format).
    mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | sed -n 's/^URIs: *\([^ ]*\).*/\1/p' | grep -v security | head -n 1)
    [ -n "$mirror" ] || mirror=$(sed -n 's/^deb  *\(\[[^]]*\]  *\)\{0,1\}\([^ ]*\).*/\2/p' /etc/apt/sources.list 2>/dev/null | grep -v security | head -n 1)
    mirror=${mirror:-http://deb.debian.org/debian}
    security=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | sed -n 's/^URIs: *\([^ ]*security[^ ]*\).*/\1/p' | head -n 1)
    security=${security:-http://deb.debian.org/debian-security}
    mkdir -p "$CACHE"
    root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    trap 'rm -rf "$root"' EXIT
    echo "debootstrap bookworm from $mirror ..." >&2
    debootstrap --variant=minbase bookworm "$root" "$mirror" > "$CACHE/debootstrap.log" 2>&1 || { tail -n 20 "$CACHE/debootstrap.log" >&2; exit 1; }
    # Point releases and security updates too, as the machine's own sources have them.
    printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s bookworm-security main\n' \
        "$mirror" "$mirror" "$security" > "$root/etc/apt/sources.list"
    # Keep the image small: no apt lists or package cache inside.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
    tar -C "$root" -cf "$TARBALL.partial" .
    mv "$TARBALL.partial" "$TARBALL"
fi

podman import --change 'CMD ["/bin/bash"]' "$TARBALL" "$IMAGE" >/dev/null
echo "$IMAGE"
