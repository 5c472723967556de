#!/usr/bin/env bash
# Debian packages that tests drive for real, each named as the command it provides
# (chromium: the training report rendered in a browser). Installs the missing ones with
# apt-get when run as root where apt-get exists; otherwise says what to run, and the tests
# that need them skip (unless TAXIOPS_TESTS_REQUIRE names them, as .ci/run does).
set -euo pipefail
missing=()
for package in "$@"; do
  command -v "$package" >/dev/null 2>&1 || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages for the tests: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "not installed: ${missing[*]} (sudo apt-get install ${missing[*]}); the tests that need them skip"
fi
