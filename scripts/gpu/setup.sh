# Source on the GPU machine, from the project's root, with the folder scripts/gpu/pack.sh made:
#   source scripts/gpu/setup.sh .devcarry/gpu
# Unpacks the server, numpy 1.26 for the Python-backend stubs and the client wheels under
# $MOE_GPU_HOME (default /tmp/moe-gpu), puts them on PYTHONPATH (numpy 1.26 first: the server
# hands PYTHONPATH to its stubs ahead of the interpreter's own packages), installs the rapidjson
# headers, and builds NVIDIA's libtorch backend with GPU support against the machine's torch.
CARRY=${1:-.devcarry/gpu}
export MOE_GPU_HOME=${MOE_GPU_HOME:-/tmp/moe-gpu}
mkdir -p "$MOE_GPU_HOME/server" "$MOE_GPU_HOME/numpy1" "$MOE_GPU_HOME/site"
tar -C "$MOE_GPU_HOME/server" -xJf "$CARRY/server.tar.xz"
tar -C "$MOE_GPU_HOME/numpy1" -xJf "$CARRY/numpy1.tar.xz"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$MOE_GPU_HOME/site" "$CARRY"/wheels/*.whl
# Headers and a CMake config only (its paths say /usr/include).
dpkg -x "$CARRY"/rapidjson-dev_*.deb /
export PYTHONPATH="$MOE_GPU_HOME/numpy1:$MOE_GPU_HOME/site:$MOE_GPU_HOME/server:$PWD:$PWD/client${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
[ -d /usr/local/cuda/bin ] && export PATH="$PATH:/usr/local/cuda/bin"
python3 -m serving.pytorch_backend --gpu
