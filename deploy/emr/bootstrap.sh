#!/bin/bash
# EMR on EC2 bootstrap action (every node): the Python the fruitpipe archive points to.
# Build the archive with `fruitpipe package --python-prefix /usr` on x86_64 Linux with Python 3.11,
# so its bin/python3.11 links to /usr/bin/python3.11, which this installs (Amazon Linux 2023).
set -euo pipefail
if ! command -v /usr/bin/python3.11 >/dev/null; then
  sudo dnf install -y python3.11
fi
/usr/bin/python3.11 --version
