#!/usr/bin/env bash
# Installs spyne, a SOAP server stack this project did not write, into a venv for the
# CMS interoperability test (tests/cms_wsdl.rs), and prints SPYNE_PYTHON=<interpreter>
# as its last line. Pinned versions; the venv lives outside the clone
# ($SPYNE_VENV, default /var/tmp/swift-spyne-venv) so a reused machine does not
# reinstall.
set -euo pipefail

venv="${SPYNE_VENV:-/var/tmp/swift-spyne-venv}"
spyne_version="2.14.0"
lxml_version="5.3.0"
pytz_version="2024.2"

# Tests that need spyne run this at the same time: one installs, the others wait.
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9

# Not `grep -q`: it would close the pipe early, pip would die of SIGPIPE, and pipefail
# would take that for a missing install.
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/pip" show spyne 2>/dev/null | grep "^Version: $spyne_version$" >/dev/null; then
    echo "installing spyne $spyne_version into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "spyne==$spyne_version" "lxml==$lxml_version" "pytz==$pytz_version"
fi
"$venv/bin/python" -c 'import spyne, lxml' >&2
echo "SPYNE_PYTHON=$venv/bin/python"
