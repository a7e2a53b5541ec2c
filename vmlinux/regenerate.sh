#!/usr/bin/env bash
# Regenerates the pinned vmlinux.h for this machine's architecture from a
# kernel's BTF. The build never reads the build host's BTF by itself: run this
# deliberately, review the diff, commit it.
#
#   vmlinux/regenerate.sh [BTF_FILE]     (default /sys/kernel/btf/vmlinux)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
btf=${1:-/sys/kernel/btf/vmlinux}
case $(uname -m) in
    x86_64) arch=x86 ;;
    aarch64) arch=arm64 ;;
    *) echo "regenerate.sh: no pinned vmlinux.h for $(uname -m)" >&2; exit 1 ;;
esac
mkdir -p "$here/$arch"
bpftool btf dump file "$btf" format c >"$here/$arch/vmlinux.h.tmp"
mv "$here/$arch/vmlinux.h.tmp" "$here/$arch/vmlinux.h"
echo "wrote $here/$arch/vmlinux.h from $btf ($(uname -r))"
