#!/bin/sh
# Installs the Debian packages the project needs to build, run and test,
# skipping the apt round trip entirely when everything is already there.
set -eu

PACKAGES="librdkafka-dev libmicrohttpd-dev kcat postgresql libpq-dev libcurl4-openssl-dev build-essential nginx nginx-dev libpcre2-dev libssl-dev zlib1g-dev
          libhiredis-dev redis-server wrk perl libnginx-mod-nchan
          libyajl-dev libcmocka-dev clang valgrind curl"
# clang only recommends its runtimes: libFuzzer's and the sanitizers' (make fuzz) are here
PACKAGES="$PACKAGES libclang-rt-14-dev"

missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" \
        || missing="$missing $p"
done

[ -z "$missing" ] && exit 0

echo "install-deps: installing$missing"
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "install-deps: run as root, or install sudo: these packages are missing:$missing" >&2
        exit 1
    fi
    SUDO=sudo
else
    SUDO=
fi
# through sudo's reset environment too: no package may stop to ask (tzdata would)
APT="$SUDO env DEBIAN_FRONTEND=noninteractive apt-get"
$APT update -q
# Installing nginx, redis-server and postgresql would start their system-wide services (nginx on
# port 80 of every interface), which the project never uses: a policy-rc.d that refuses every
# start holds them back for the install, and goes again after it unless it was there before.
POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ]; then
    trap '$SUDO rm -f "$POLICY"' EXIT
    # dash runs no EXIT trap when a signal ends it: the file would block every service for good
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'exit 129' HUP
    printf '#!/bin/sh\n# install-deps.sh: no service starts while it installs\nexit 101\n' \
        | $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod 755 "$POLICY"
fi
$APT install -y -q --no-install-recommends $missing
