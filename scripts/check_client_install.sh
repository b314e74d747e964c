#!/usr/bin/env bash
# `pip install ./client` into a fresh virtual environment, check that torch is NOT there, and
# that the client imports and answers a running server over HTTP and gRPC, sync and async.
#
#   scripts/check_client_install.sh HTTP_URL GRPC_URL [VENV_DIR]
#   e.g. scripts/check_client_install.sh localhost:8000 localhost:8001
# PYTHON picks the interpreter for the venv (default python3). pip's cache is used as usual.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
http_url=${1:?usage: $0 HTTP_URL GRPC_URL [VENV_DIR]}
grpc_url=${2:?usage: $0 HTTP_URL GRPC_URL [VENV_DIR]}
venv=${3:-$(mktemp -d)/venv}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"${PYTHON:-python3}" -m venv "$venv"
# Install from a copy so that no build/ or egg-info lands in the source tree.
cp -r "$root/client" "$work/client"
rm -rf "$work/client/build" "$work"/client/*.egg-info
"$venv/bin/python" -m pip install --quiet "$work/client"

if "$venv/bin/python" -c "import torch" 2>/dev/null; then
    echo "FAIL: torch is importable in the client's environment" >&2
    exit 1
fi
echo "ok: torch is not installed ($("$venv/bin/python" -m pip list --format=freeze | wc -l) packages)"

# Run from $work so that the source tree's client/ is not on sys.path.
cd "$work"
"$venv/bin/python" - "$http_url" "$grpc_url" <<'PY'
import asyncio, sys
import moe_client
from moe_client import AsyncMoEClient, MoEClient, Prediction

http_url, grpc_url = sys.argv[1:3]
assert "site-packages" in moe_client.__file__, moe_client.__file__
assert "torch" not in sys.modules
text = "NASA launches a new rover to study the surface of Mars"
answers = []
for url, protocol in ((http_url, "http"), (grpc_url, "grpc")):
    with MoEClient(url, protocol=protocol) as client:
        assert client.ready(), f"{protocol} server at {url} is not ready"
        answers.append(client.classify(text))

async def main():
    async with AsyncMoEClient(http_url) as client:
        return await client.classify([text, text], workflow="v1")
answers += asyncio.run(main())
assert all(isinstance(p, Prediction) for p in answers), answers
assert len({p.label for p in answers}) == 1, answers
print(f"ok: moe_client from {moe_client.__file__} answers: {answers[0].label} "
      f"({answers[0].confidence:.3f}) over http, grpc and async")
PY
