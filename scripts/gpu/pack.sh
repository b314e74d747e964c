#!/usr/bin/env bash
# Pack what a GPU machine without network needs to serve this project with Triton, beside a copy
# of the project itself: the tritonserver 2.51 of the nvidia-pytriton wheel (binary, Python
# backend, the Python 3.12 stub, its libraries), numpy 1.26 for the Python-backend stubs (their
# pybind11 garbles text tensors under numpy 2), tritonclient and what its HTTP client needs, and
# the rapidjson headers NVIDIA's libtorch backend is built with. About 29 MB.
#
#   scripts/gpu/pack.sh [OUT]            (default .devcarry/gpu; add --with-project to include a
#                                         `git archive` of HEAD for a machine without the checkout)
# Then, on the GPU machine, from the project's root:
#   source scripts/gpu/setup.sh OUT && scripts/gpu/run.sh RESULTS
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=.devcarry/gpu
WITH_PROJECT=0
for arg in "$@"; do
  case "$arg" in
    --with-project) WITH_PROJECT=1 ;;
    *) OUT="$arg" ;;
  esac
done
PY=${PYTHON:-$PWD/.venv/bin/python}
SITE=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
[ -x "$SITE/pytriton/tritonserver/bin/tritonserver" ] || { echo "nvidia-pytriton is not installed in $PY (make setup)"; exit 2; }
rm -rf "$OUT" && mkdir -p "$OUT"
TMP=$(mktemp -d) && trap 'rm -rf "$TMP"' EXIT

echo "server: tritonserver, Python backend, the 3.12 stub, their libraries"
mkdir -p "$TMP/server/pytriton/tritonserver/python_backend_stubs"
touch "$TMP/server/pytriton/__init__.py"
cp -r "$SITE/pytriton/tritonserver/bin" "$SITE/pytriton/tritonserver/backends" "$TMP/server/pytriton/tritonserver/"
cp -r "$SITE/pytriton/tritonserver/python_backend_stubs/3.12" "$TMP/server/pytriton/tritonserver/python_backend_stubs/"
rm -rf "$TMP/server/pytriton/tritonserver/backends/python/__pycache__"
# The 3.13 libpython serves only the 3.13 stub; the machine has its own libpython3.12.
cp -r "$SITE/nvidia_pytriton.libs" "$TMP/server/" && rm "$TMP"/server/nvidia_pytriton.libs/libpython3-*
# ICU's 29 MB data library is loaded only because libtritonserver links libxml2 (for cloud
# storage repositories), which links ICU; nothing reads the data for a local repository. A stub
# with the one symbol the loader asks for saves 7 MB of the trip (checked: the server loads and
# answers with it).
ICUDATA=$(basename "$TMP"/server/nvidia_pytriton.libs/libicudata-*.so.*)
echo 'const char icudt70_dat[16] = {0};' > "$TMP/icudata.c"
cc -shared -fPIC -o "$TMP/server/nvidia_pytriton.libs/$ICUDATA" -Wl,-soname,"$ICUDATA" "$TMP/icudata.c"
tar -C "$TMP/server" -cf - . | xz -9e -T0 > "$OUT/server.tar.xz"

WHEELS="numpy==1.26.4 tritonclient==2.73.0 python-rapidjson==1.25 gevent==26.9.0 geventhttpclient==2.6.1
        greenlet==3.3.2 zope.event==6.2 zope.interface==8.7 brotli==1.2.1"
echo "wheels for CPython 3.12: $(echo $WHEELS)"
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$TMP/wheels" $WHEELS 2>&1 | grep -v '^WARNING' || true
# Every wheel unpacked without its tests into one xz archive the set-up unpacks as the
# environment's site-packages (2 MB less than the wheels' zip compression): the stubs import
# numpy from there, first on their path.
mkdir -p "$TMP/site"
for wheel in "$TMP"/wheels/*.whl; do (cd "$TMP/site" && $PY -m zipfile -e "$wheel" .); done
rm -rf "$TMP"/site/numpy/*/tests "$TMP"/site/numpy/tests "$TMP"/site/gevent/tests "$TMP"/site/greenlet/tests \
  "$TMP"/site/zope/interface/tests "$TMP"/site/zope/interface/common/tests "$TMP"/site/*.data
# What nothing here imports, so the call's tree stays under the device's 64 MiB: numpy's SIMD test
# module, f2py and C headers, and brotli's 5 MB library (geventhttpclient imports brotli but uses it
# only for answers sent brotli-encoded, which tritonserver never sends unasked).
rm -rf "$TMP"/site/numpy/core/_simd.* "$TMP"/site/numpy/f2py "$TMP"/site/numpy/core/include \
  "$TMP"/site/_brotli.* "$TMP"/site/brotli.py
printf '%s\n' '"""Stand-in for brotli on the GPU machine: the real library is not packed."""' '' '' \
  'def decompress(data):' '    raise RuntimeError("brotli is not packed for the GPU machine (scripts/gpu/pack.sh)")' \
  > "$TMP/site/brotli.py"
tar -C "$TMP/site" -cf - . | xz -9e -T0 > "$OUT/site.tar.xz"

echo "rapidjson headers (Debian's rapidjson-dev)"
(cd "$TMP" && apt-get download rapidjson-dev >/dev/null 2>&1) || { apt-get update -qq && (cd "$TMP" && apt-get download rapidjson-dev); }
cp "$TMP"/rapidjson-dev_*.deb "$OUT/"

echo "wrk, the compiled load generator of moe bench, and its LuaJIT (Debian's packages)"
(cd "$TMP" && apt-get download wrk libluajit-5.1-2 libluajit-5.1-common >/dev/null 2>&1) \
  || { apt-get update -qq && (cd "$TMP" && apt-get download wrk libluajit-5.1-2 libluajit-5.1-common); }
mkdir -p "$OUT/debs" && cp "$TMP"/wrk_*.deb "$TMP"/libluajit-5.1-*.deb "$OUT/debs/"

echo "AG News test set (the data folder does not travel with the project)"
DATA=$($PY -c 'from moe.data import DEFAULT_DATA; print(DEFAULT_DATA)')
xz -9 -c "$DATA/test.csv" > "$OUT/test.csv.xz"

if [ "$WITH_PROJECT" = 1 ]; then
  git archive --format=tar.gz -o "$OUT/project.tar.gz" HEAD
fi
du -sh "$OUT" && ls -la "$OUT"
