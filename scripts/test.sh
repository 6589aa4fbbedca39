#!/usr/bin/env bash
# Install what the tests need, lint, and run the tests. Used by the README and by CI (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements-dev.txt
python -m pip install -q --no-deps -e .  # the crossmodal library package
# The browser test drives Debian's Chromium (browser downloads are not possible everywhere).
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -m ruff check .
python -m pytest -q "$@"
