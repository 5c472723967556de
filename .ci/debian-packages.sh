#!/usr/bin/env bash
# Debian packages that tests drive for real (chromium: the training report rendered in a
# browser; postgresql: team mode's database). Installs the missing ones with apt-get when
# run as root where apt-get exists; otherwise says what to run, and the tests that need
# them skip (unless TAXIOPS_TESTS_REQUIRE names them, as .ci/run does).
set -euo pipefail
installed() {
  if command -v dpkg-query >/dev/null 2>&1; then
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
  else
    command -v "$1" >/dev/null 2>&1
  fi
}
missing=()
for package in "$@"; do
  installed "$package" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages for the tests: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # The package's own cluster is not needed (the tests make theirs): do not start it.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "not installed: ${missing[*]} (sudo apt-get install ${missing[*]}); the tests that need them skip"
fi
