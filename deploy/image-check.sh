#!/usr/bin/env bash
# Builds the reprocessor's OCI image without a daemon and without pulling anything, then
# starts it: the check that the image that ships is one that was built and ran.
#
#   buildah from scratch + the static binary (built as deploy/Dockerfile builds it) + the
#   system's CA certificates + a passwd entry for user 65532, entrypoint /reprocessor,
#   user 65532:65532; committed as an OCI layout; then umoci unpacks it and
#   /reprocessor version runs inside the unpacked root as user 65532.
#
# Usage: deploy/image-check.sh [OUT_DIR]   (needs buildah, umoci, chroot; run as root)
# The image is left in OUT_DIR/oci (tag reprocessor:check), default a temporary directory.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$(mktemp -d)}
mkdir -p "$out"
export STORAGE_DRIVER=${STORAGE_DRIVER:-vfs} BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}

version=$(git -C "$root" describe --tags --always 2>/dev/null || echo dev)
revision=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)
echo "image-check: building the static binary ($version, $revision)"
(cd "$root" && CGO_ENABLED=0 go build -trimpath -buildvcs=false \
	-ldflags "-s -w -X github.com/reprocessor/reprocessor/version.version=$version -X github.com/reprocessor/reprocessor/version.revision=$revision" \
	-o "$out/reprocessor" ./cmd/reprocessor)

ca=/etc/ssl/certs/ca-certificates.crt
[ -r "$ca" ] || { echo "image-check: $ca is missing (apt-get install ca-certificates)" >&2; exit 1; }
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$out/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$out/group"

ctr=$(buildah from scratch)
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
buildah copy --chmod 0755 "$ctr" "$out/reprocessor" /reprocessor >/dev/null
buildah copy --chmod 0644 "$ctr" "$ca" /etc/ssl/certs/ca-certificates.crt >/dev/null
buildah copy --chmod 0644 "$ctr" "$out/passwd" /etc/passwd >/dev/null
buildah copy --chmod 0644 "$ctr" "$out/group" /etc/group >/dev/null
buildah config --user 65532:65532 --port 9464 --entrypoint '["/reprocessor"]' --cmd run \
	--label org.opencontainers.image.source=https://github.com/reprocessor/reprocessor \
	--label org.opencontainers.image.version="$version" --label org.opencontainers.image.revision="$revision" "$ctr"
rm -rf "$out/oci"
buildah commit --quiet "$ctr" "oci:$out/oci:reprocessor:check" >/dev/null
echo "image-check: committed $out/oci (reprocessor:check)"

rm -rf "$out/bundle"
umoci unpack --image "$out/oci:reprocessor:check" "$out/bundle" >/dev/null
config="$out/bundle/config.json"
grep -q '"uid": *65532' "$config" || { echo "image-check: the image does not run as uid 65532:" >&2; grep -A3 '"user"' "$config" >&2; exit 1; }
got=$(chroot --userspec=65532:65532 "$out/bundle/rootfs" /reprocessor version)
echo "image-check: /reprocessor version as 65532 in the unpacked image: $got"
case "$got" in
reprocessor*) ;;
*) echo "image-check: unexpected output" >&2; exit 1 ;;
esac
