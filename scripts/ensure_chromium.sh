#!/usr/bin/env bash
# Make sure Debian's chromium and chromium-driver are there for the page test (tests/test_page.py):
# install them with apt when missing and running as root, otherwise say in one line what to install.
# Exit non-zero when either is still missing. Nothing is downloaded outside the package manager.
set -u
CHROMIUM=/usr/bin/chromium
CHROMEDRIVER=/usr/bin/chromedriver
present() { [ -x "$CHROMIUM" ] && [ -x "$CHROMEDRIVER" ]; }
if present; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "fruitpipe: chromium / chromium-driver not found; installing them with apt-get" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  if present; then exit 0; fi
fi
echo "fruitpipe: the page test needs $CHROMIUM and $CHROMEDRIVER; install the Debian packages chromium and chromium-driver (apt-get install chromium chromium-driver)" >&2
exit 1
