#!/bin/sh
# Register Debian's qemu-user-static binfmt handlers with the kernel (the emulators of other
# architectures: linux/arm64 on an amd64 host, and so on), mounting binfmt_misc first where it
# is not mounted. Each handler comes from /usr/lib/binfmt.d/qemu-*.conf as the package ships it,
# with the F (fix-binary) flag: the kernel opens the emulator now, so containers (buildah's RUN
# steps, an engine's, a dind sidecar's nested ones) use it although their root has no emulator.
# Idempotent: a handler already registered is left alone. Used by scripts/services.sh and by the
# binfmt DaemonSet's image (deploy/k8s/emulation). Needs root (privileged in a container).
set -eu
BINFMT=/proc/sys/fs/binfmt_misc
if [ ! -e "$BINFMT/register" ]; then
  mount -t binfmt_misc binfmt_misc "$BINFMT"
fi
registered=0
for conf in /usr/lib/binfmt.d/qemu-*.conf; do
  [ -e "$conf" ] || { echo "binfmt-register: no qemu handlers in /usr/lib/binfmt.d (install qemu-user-static)" >&2; exit 1; }
  name=$(basename "$conf" .conf)
  [ -e "$BINFMT/$name" ] && continue
  if grep -v '^#' "$conf" >"$BINFMT/register"; then
    registered=$((registered + 1))
  else
    echo "binfmt-register: could not register $name" >&2
  fi
done
grep -q '^enabled' "$BINFMT/status" || echo 1 >"$BINFMT/status"
echo "binfmt-register: $registered handler(s) registered; $(ls "$BINFMT" | grep -c '^qemu-') qemu handler(s) in place"
