#!/bin/sh
# Build the image of docker/Dockerfile with podman on a machine without an image registry: the
# base is a local Debian image (base_image.sh), the build runs on the host's network, and the
# local package sources pip is configured with here (find-links folders, file:// indexes, such
# as a CPU torch wheel on disk) are mounted read-only and handed to pip in the build.
#
#   scripts/containers/build_image.sh                 # localhost/moe-triton:cpu
#   scripts/containers/build_image.sh --no-cache      # options after it go to podman build
#   MOE_IMAGE=... BASE=docker.io/library/debian:bookworm-slim scripts/containers/build_image.sh
set -eu
cd "$(dirname "$0")/../.."

IMAGE=${MOE_IMAGE:-localhost/moe-triton:cpu}
extra="$*"
BASE=${BASE:-$(scripts/containers/base_image.sh)}
PIP=${PIP:-$(command -v .venv/bin/pip || command -v pip3 || command -v pip)}

# `pip config list` lines look like  global.find-links='/opt/wheels'  (values split on spaces).
config_value() {
    "$PIP" config list 2>/dev/null | sed -n "s/^[a-z:.]*\.$1='\(.*\)'$/\1/p" | awk '!seen[$0]++' | tr '\n' ' '
}
find_links=$(config_value find-links)
extra_index=$(config_value extra-index-url)
index=$(config_value index-url)

set -- --network host -f docker/Dockerfile -t "$IMAGE" --build-arg "BASE=$BASE"
mounted=" "
for source in $find_links $extra_index $index; do
    path=${source#file://}
    case "$path" in
        /*) ;;
        *) continue ;;  # a remote index: reached over the host's network
    esac
    # An index's simple/ folder links to files beside it: mount the folder above it.
    [ "${path%/simple}" != "$path" ] && path=${path%/simple}
    [ -e "$path" ] || continue
    case "$mounted" in *" $path "*) continue ;; esac
    mounted="$mounted$path "
    set -- "$@" --volume "$path:$path:ro"
done
# The certificate bundle pip trusts here (a proxy that re-signs TLS needs its own CA), mounted
# beside the image's own bundle, not over it.
cert=$(config_value cert)
cert=${cert% }
if [ -n "$cert" ] && [ -f "$cert" ]; then
    set -- "$@" --volume "$cert:/run/host-pip-cert.pem:ro" --build-arg PIP_CERT=/run/host-pip-cert.pem
fi
# Values with spaces travel as they are: pip splits them as it does here.
[ -n "${find_links% }" ] && set -- "$@" --build-arg "PIP_FIND_LINKS=${find_links% }"
[ -n "${extra_index% }" ] && set -- "$@" --build-arg "PIP_EXTRA_INDEX_URL=${extra_index% }"
[ -n "${index% }" ] && set -- "$@" --build-arg "PIP_INDEX_URL=${index% }"

# shellcheck disable=SC2086 # the caller's options, split as the shell split them
set -- "$@" $extra
echo "podman build $* ." >&2
podman build "$@" .
echo "$IMAGE"
