# Source on the GPU machine, from the project's root, with the folder scripts/gpu/pack.sh made:
#   source scripts/gpu/setup.sh .devcarry/gpu
# Makes a virtual environment under $MOE_GPU_HOME (default /tmp/moe-gpu) whose own packages are
# numpy 1.26 and the client wheels, with the machine's packages (torch, tokenizers, ...) after
# them through a .pth file, and puts it first on PATH. Triton's Python-backend stubs ignore
# PYTHONPATH: they take the packages of the `python3` first on PATH, so this is how they get
# numpy 1.x (under numpy 2 their pybind11 garbles text tensors). Then unpacks the server and
# the test set, installs the rapidjson headers, and builds NVIDIA's libtorch backend with GPU
# support against the machine's torch.
CARRY=${1:-.devcarry/gpu}
export MOE_GPU_HOME=${MOE_GPU_HOME:-/tmp/moe-gpu}
MACHINE_SITE=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
python3 -m venv --without-pip "$MOE_GPU_HOME/env"
ENV_SITE=$("$MOE_GPU_HOME/env/bin/python3" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
tar -C "$ENV_SITE" -xJf "$CARRY/site.tar.xz"
echo "$MACHINE_SITE" > "$ENV_SITE/zz-machine-packages.pth"
mkdir -p "$MOE_GPU_HOME/server" "$MOE_GPU_HOME/data/ag_news"
tar -C "$MOE_GPU_HOME/server" -xJf "$CARRY/server.tar.xz"
xz -dc "$CARRY/test.csv.xz" > "$MOE_GPU_HOME/data/ag_news/test.csv"
# Headers and a CMake config only (its paths say /usr/include).
dpkg -x "$CARRY"/rapidjson-dev_*.deb /
# wrk unpacked beside the rest (not into /), its LuaJIT found through LD_LIBRARY_PATH.
for deb in "$CARRY"/debs/*.deb; do dpkg -x "$deb" "$MOE_GPU_HOME/debs"; done
export PATH="$MOE_GPU_HOME/debs/usr/bin:$PATH"
export LD_LIBRARY_PATH="$MOE_GPU_HOME/debs/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export MOE_DATA="$MOE_GPU_HOME/data/ag_news"
export PATH="$MOE_GPU_HOME/env/bin:$PATH"
[ -d /usr/local/cuda/bin ] && export PATH="$PATH:/usr/local/cuda/bin"
export PYTHONPATH="$MOE_GPU_HOME/server:$PWD:$PWD/client${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
python3 -c 'import numpy, torch; print("numpy", numpy.__version__, "torch", torch.__version__, torch.cuda.device_count(), "GPUs")'
# A build carried from an earlier call on the same kind of machine (MOE_BACKEND_CACHE) is reused.
python3 -m serving.pytorch_backend --gpu
