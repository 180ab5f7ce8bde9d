#!/bin/sh
# Installs the Debian packages the project needs to build, run and test,
# skipping the apt round trip entirely when everything is already there.
set -eu

PACKAGES="librdkafka-dev libmicrohttpd-dev kcat postgresql libpq-dev libcurl4-openssl-dev build-essential nginx nginx-dev libpcre2-dev libssl-dev zlib1g-dev
          libhiredis-dev redis-server wrk perl libnginx-mod-nchan
          libyajl-dev libcmocka-dev clang valgrind curl"

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
# Installing nginx, redis-server and postgresql would start their system-wide services (nginx on
# port 80 of every interface), which the project never uses: a policy-rc.d that refuses every
# start holds them back for the install, and goes again after it unless it was there before.
POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ]; then
    trap '$SUDO rm -f "$POLICY"' EXIT
    printf '#!/bin/sh\n# install-deps.sh: no service starts while it installs\nexit 101\n' \
        | $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod 755 "$POLICY"
fi
$SUDO apt-get install -y -q --no-install-recommends $missing
