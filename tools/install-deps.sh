#!/bin/sh
# Installs the Debian packages the project needs to build, run and test,
# skipping the apt round trip entirely when everything is already there.
set -eu

PACKAGES="librdkafka-dev libmicrohttpd-dev kcat postgresql libpq-dev libcurl4-openssl-dev build-essential nginx nginx-dev libpcre2-dev libssl-dev zlib1g-dev
          libhiredis-dev redis-server wrk perl libnginx-mod-nchan
          libyajl-dev libcmocka-dev clang valgrind"

missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" \
        || missing="$missing $p"
done

[ -z "$missing" ] && exit 0

echo "install-deps: installing$missing"
if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# policy-rc.d keeps Debian from starting system-wide nginx/redis services we do not use.
$SUDO apt-get install -y -q --no-install-recommends $missing
