#!/usr/bin/env bash
# Make sure Java 17+ is there for Spark: install it with apt when missing and running as root,
# otherwise say in one line what to install. Exit non-zero when Java is still missing.
set -u
java_major() {
  local java="${JAVA_HOME:+$JAVA_HOME/bin/}java"
  command -v "$java" >/dev/null 2>&1 || return 1
  "$java" -version 2>&1 | sed -n 's/.*version "\([0-9]*\)\(\.\([0-9]*\)\)\{0,1\}.*/\1 \3/p' | head -n1 |
    awk '{ print ($1 == 1 ? $2 : $1) }'
}
major=$(java_major || true)
if [ -n "$major" ] && [ "$major" -ge 17 ]; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "fruitpipe: Java 17 not found; installing openjdk-17-jre-headless with apt-get" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null
  major=$(java_major || true)
  if [ -n "$major" ] && [ "$major" -ge 17 ]; then exit 0; fi
fi
echo "fruitpipe: Java 17 or newer is required (found: ${major:-none}); install openjdk-17-jre-headless (apt) or set JAVA_HOME" >&2
exit 1
