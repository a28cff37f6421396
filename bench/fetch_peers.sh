#!/usr/bin/env bash
# Refresh bench/peers/: the peer libraries bench/gpu_check.sh compares against, committed because the GPU machine
# has no package registry (1.2 MB; bench/peers.py unpacks them there, nothing is built):
#   Liger-Kernel and einops: pure-Python wheels;
#   mamba-ssm: the source distribution (pip cannot `download` it without building its CUDA extension to read the
#   metadata, so the sdist URL pip resolves is fetched directly from the package index).
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
mkdir -p peers
rm -f peers/*.whl peers/*.tar.gz
"$PY" -m pip download -q --no-deps --only-binary=:all: liger-kernel einops -d peers
URL="$("$PY" -m pip download -vvv --no-deps --no-binary :all: mamba-ssm -d "$(mktemp -d)" 2>&1 \
       | grep -o 'https://[^ "]*mamba_ssm-[0-9][^ "]*\.tar\.gz' | head -1 || true)"
[ -n "$URL" ] || { echo "could not resolve the mamba-ssm sdist URL" >&2; exit 1; }
"$PY" -c "import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], 'peers/' + sys.argv[1].rsplit('/', 1)[1])" "$URL"
ls -la peers && du -sh peers
