#!/bin/sh
# Lays out the image's whole filesystem in DIR: the static binary (without its debug info)
# and the default config.
# CA roots are inside the binary (Mozilla's, via webpki-roots), so no certificate bundle is
# needed. Used by the Dockerfile's build stage and by test-image.sh, so both ship the same.
# usage: rootfs.sh BINARY CONFIG DIR
set -eu
bin=$1 config=$2 dir=$3
mkdir -p "$dir/etc/outrigger"
# Debug info (line tables, for profiling) is 35 of the binary's 47 MB; symbols stay, so a
# backtrace still names functions.
strip --strip-debug -o "$dir/outrigger" "$bin"
cp "$config" "$dir/etc/outrigger/outrigger.yaml"
chmod 0555 "$dir/outrigger"
chmod 0444 "$dir/etc/outrigger/outrigger.yaml"
