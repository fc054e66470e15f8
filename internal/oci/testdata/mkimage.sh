#!/usr/bin/env bash
# mkimage.sh OUT [APP]: build a two-layer container image with real tools
# (GNU tar writes the layers, umoci assembles the image and unpacks the
# reference root filesystem, skopeo copies it into every transport).
#
# Layer 1: /bin/app (APP, or a small script; the vmtests give
#   internal/testprog/svc, whose argv mode prints its argv and cwd), a hard link, a symlink, a
#   setuid file, files owned by 1000:1001, /dev/null (a char device), a fifo,
#   /deleteme, /data/old1 and /data/sub/old2.
# Layer 2: deletes /deleteme (.wh.deleteme), replaces /data opaquely
#   (data/.wh..wh..opq, mode 0750 owned by 5:6, with data/new) and changes
#   /etc/conf.
# Config: Entrypoint [/bin/app, argv], Cmd ["first arg", "two words"],
#   Env FOO=bar and GREETING=hello world, WorkingDir /data.
#
# Writes OUT/oci (tag "app"), OUT/app-docker.tar (docker-archive,
# localhost/app:v1), OUT/app-oci.tar (oci-archive, tag "app") and
# OUT/bundle/rootfs (umoci unpack). Needs root (chown, mknod).
set -euo pipefail
out=$1
app=${2:-}
mkdir -p "$out"
cd "$out"

l1=$out/l1 l2=$out/l2
rm -rf "$l1" "$l2" oci bundle app-docker.tar app-oci.tar
mkdir -p "$l1"/{bin,etc,data/sub,dev,home/user} "$l2"/{data,etc}
if [ -n "$app" ]; then
	cp "$app" "$l1/bin/app"
else
	printf '#!/bin/sh\necho app "$@"\n' >"$l1/bin/app"
fi
chmod 0755 "$l1/bin/app"
ln "$l1/bin/app" "$l1/bin/app-hard"
ln -s app "$l1/bin/app-link"
ln -s /etc/conf "$l1/etc/conf-abs"
printf 'one\n' >"$l1/etc/conf"
printf 'setuid\n' >"$l1/bin/su-ish" && chmod 4755 "$l1/bin/su-ish"
printf 'mine\n' >"$l1/home/user/file" && chmod 0600 "$l1/home/user/file"
chown -R 1000:1001 "$l1/home/user"
chmod 1777 "$l1/home"
mknod "$l1/dev/null" c 1 3 && chmod 0666 "$l1/dev/null"
mkfifo "$l1/dev/fifo"
printf 'gone\n' >"$l1/deleteme"
printf 'old\n' >"$l1/data/old1"
printf 'old\n' >"$l1/data/sub/old2"

: >"$l2/.wh.deleteme"
: >"$l2/data/.wh..wh..opq"
printf 'new\n' >"$l2/data/new"
chown -R 5:6 "$l2/data" && chmod 0750 "$l2/data"
printf 'two\n' >"$l2/etc/conf"

tar --numeric-owner --sort=name -C "$l1" -cf layer1.tar .
tar --numeric-owner --sort=name -C "$l2" -cf layer2.tar .

umoci init --layout oci
umoci new --image oci:app
umoci raw add-layer --image oci:app layer1.tar
umoci raw add-layer --image oci:app layer2.tar
umoci config --image oci:app \
	--config.entrypoint /bin/app --config.entrypoint argv \
	--config.cmd 'first arg' --config.cmd 'two words' \
	--config.env FOO=bar --config.env 'GREETING=hello world' \
	--config.workingdir /data
umoci unpack --image oci:app bundle >/dev/null

skopeo copy -q oci:oci:app docker-archive:app-docker.tar:localhost/app:v1
skopeo copy -q oci:oci:app oci-archive:app-oci.tar:app
rm -rf "$l1" "$l2" layer1.tar layer2.tar
