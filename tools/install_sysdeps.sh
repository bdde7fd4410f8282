#!/usr/bin/env bash
# Install the Debian packages ilt needs when they are missing: espeak-ng and sox
# (offline speech for the mini recipe and the tests) and sctk (NIST sclite, the
# reference scorer used in the scoring tests). As root it installs them; as
# anyone else it prints the exact command and fails.
set -euo pipefail

declare -A pkg_of=([espeak-ng]=espeak-ng [sox]=sox [sctk]=sctk)  # command -> package
missing=()
for cmd in "${!pkg_of[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${pkg_of[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing Debian packages: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "ilt needs these system packages: ${missing[*]}" >&2
  echo "Install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
