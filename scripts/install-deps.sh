#!/usr/bin/env bash
# Install everything spud needs to build and test on Debian 12 (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(build-essential cmake ninja-build pkg-config clang libclang-rt-14-dev
      libpcre2-dev libjson-c-dev libutf8proc-dev libmicrohttpd-dev libcriterion-dev
      python3-numpy python3-jinja2 nodejs)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# nodejs may come from elsewhere than Debian; a working node+npm is enough.
if command -v node >/dev/null && command -v npm >/dev/null; then
  missing=("${missing[@]/nodejs}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  pkgs=("${missing[@]}")
  # Debian's npm comes with nodejs only if node is missing altogether.
  command -v npm >/dev/null || pkgs+=(npm)
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
fi
# npm packages used as independent references by the tests (pinned in package-lock.json).
if [ -f package-lock.json ]; then
  [ -d node_modules ] && npm ls --silent >/dev/null 2>&1 || npm ci --silent --no-audit --no-fund
fi
