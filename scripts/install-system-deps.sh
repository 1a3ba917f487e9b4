#!/usr/bin/env bash
# Installs the Debian packages the test suite needs (real servers, not fakes): redis-server, dovecot-imapd,
# chromium and chromium-driver (the operator console is driven in headless Chromium by Selenium), and python3-venv
# when this Python cannot create a virtualenv. Idempotent; does nothing when all are present.
# Installing the packages does not start their system services on our machines; the tests start their own
# instances on free loopback ports with their own configuration either way.
set -euo pipefail

PYTHON=${PYTHON:-python3}
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ] || need+=(dovecot-imapd)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# Debian's chromedriver matches Debian's chromium exactly; Selenium gets both paths and never downloads a driver.
command -v chromedriver >/dev/null 2>&1 || [ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
if [ "${1:-}" = "--venv-only" ]; then need=(); fi
if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then need+=(python3-venv); fi
[ ${#need[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-system-deps: missing ${need[*]} and no apt-get here: install them with your package manager" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-system-deps: need root (or sudo) to install ${need[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
echo "install-system-deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# policy-rc.d on containers may refuse to start services; that is fine (the tests run their own instances).
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
