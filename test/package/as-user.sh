#!/usr/bin/env bash
# Runs COMMAND (a bash command line) as sbuser on the machine user-root.sh made, in a mount
# namespace of its own (run this under `unshare --mount --propagation private`): the root
# copy-on-write (an overlay whose upper layer is WORK/upper, so the cached root stays clean), the
# host's Node binary and npm bound at /opt/node, PKGS at /pkgs read-only, then pivot_root into it
# (not chroot: a chrooted process may not make the user namespaces the VMM's jail needs) and a
# real uid of 4242 with no capabilities. The environment is only HOME, PATH and the KEY=VALUEs.
#   as-user.sh ROOT WORK PKGS [KEY=VALUE...] -- COMMAND
set -euo pipefail
root="$1" work="$2" pkgs="$3"
shift 3
vars=()
while [ "$1" != "--" ]; do vars+=("$1"); shift; done
shift
m="$work/root"
mkdir -p "$work/upper" "$work/overlay-work" "$m"
mount -t overlay overlay -o "lowerdir=$root,upperdir=$work/upper,workdir=$work/overlay-work" "$m"
mount -t proc proc "$m/proc"
mount --rbind /dev "$m/dev"
mount --rbind /sys "$m/sys"
mount -t tmpfs -o mode=1777 tmp "$m/tmp"
node="$(command -v node)"
mount --bind -o ro "$node" "$m/opt/node/bin/node"
mount --bind -o ro "$(dirname "$(dirname "$node")")/lib/node_modules/npm" "$m/opt/node/lib/node_modules/npm"
mount --bind -o ro "$pkgs" "$m/pkgs"
cd "$m"
pivot_root . oldroot
umount -l /oldroot
cd /
exec setpriv --reuid=4242 --regid=4242 --clear-groups --inh-caps=-all \
  env -i HOME=/home/sbuser PATH=/opt/node/bin:/usr/bin:/bin "${vars[@]}" bash -c "$1"
