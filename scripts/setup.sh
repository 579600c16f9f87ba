#!/usr/bin/env bash
# Set up mobile-vla in ./.venv: Debian packages for headless rendering (when root and missing), a virtual
# environment, the CPU build of torch and the package with its test tools. Idempotent and quiet when done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  need=()
  for pkg in libosmesa6 libgl1 libegl1; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  if [ "${#need[@]}" -gt 0 ]; then
    echo "[setup] apt-get install ${need[*]}"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null) \
      || echo "[setup] warning: could not install ${need[*]}; the simulator falls back to EGL rendering"
  fi
fi

stamp=.venv/.mobile-vla-installed
hash_now="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash_now" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
log="$(mktemp)"
pip_install() {
  .venv/bin/python -m pip install -q "$@" >"$log" 2>&1 || { grep -v "is ignored" "$log" >&2; exit 1; }
}
pip_install --upgrade pip
# The CPU build of torch first: an unpinned torch from a dependency would otherwise pull a CUDA build.
# (A GPU user installs the CUDA torch of their choice into .venv before running this; see README.)
.venv/bin/python -c "import torch" 2>/dev/null || pip_install "torch==2.13.0"
pip_install -e ".[dev]"
.venv/bin/python -c "import mobile_vla, torch; print(f'[setup] mobile-vla {mobile_vla.__version__}, torch {torch.__version__}')"
echo "$hash_now" > "$stamp"
