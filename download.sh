#!/bin/sh
# Download the released AHIQ PIPAL checkpoint and the pinned timm backbone weights, for offline use.
# Every address, sha256 and target path comes from models/weights.tsv (hubconf.py reads the same table).
usage() {
    cat <<'HELP'
usage: sh download.sh [--patch16] [--help]
  Fetches into checkpoints/ (AHIQ_CHECKPOINTS_DIR changes it) the rows of models/weights.tsv:
  the released checkpoint (role checkpoint, sha256 checked), the ViT-B/8 (vit8) and ResNet-50 (resnet) backbones
  (no sha256 is published for them: their keys and shapes are checked when loaded); --patch16 adds the ViT-B/16.
  Files already present are kept. A file that fails does not stop the others; the exit status is 1 if any failed.
  Mirrors: the variable named in the table's last column replaces a row's URL (AHIQ_CKPT_URL, AHIQ_VIT8_URL,
  AHIQ_VIT16_URL, AHIQ_RESNET_URL); the same name with _SHA256 instead of _URL replaces its sha256.
HELP
}
set -u
cd "$(dirname "$0")"
ROLES="checkpoint vit8 resnet"
for arg in "$@"; do
    case $arg in
        --patch16) ROLES="$ROLES vit16" ;;
        -h|--help) usage; exit 0 ;;
        *) echo "download.sh: unknown argument $arg" >&2; usage >&2; exit 2 ;;
    esac
done
DEST=${AHIQ_CHECKPOINTS_DIR:-${AHIQ_HOME:-.}/checkpoints}

sha_ok() {  # sha_ok FILE EXPECTED_PREFIX
    [ -z "$2" ] && return 0
    actual=$(sha256sum "$1" | cut -d' ' -f1)
    case "$actual" in "$2"*) return 0 ;; *) return 1 ;; esac
}

fetch() {  # fetch URL TARGET SHA256_PREFIX; prints what happened, returns 1 on failure
    url=$1; target=$2; sha=$3
    if [ -f "$target" ]; then
        sha_ok "$target" "$sha" && { echo "already present: $target"; return 0; }
        echo "download.sh: error: $target exists but its sha256 does not start with $sha; move it away and rerun" >&2
        return 1
    fi
    mkdir -p "$(dirname "$target")"
    part="$target.part.$$"
    echo "downloading $url"
    if command -v curl >/dev/null 2>&1; then
        curl -fL --retry 2 --connect-timeout 20 -sS -o "$part" "$url"
    else
        wget -q -T 20 -t 3 -O "$part" "$url"
    fi || {
        rm -f "$part"
        echo "download.sh: error: cannot download $url (offline?); run download.sh on a connected machine and copy $DEST/ here, or set a mirror (sh download.sh --help)" >&2
        return 1
    }
    if ! sha_ok "$part" "$sha"; then
        rm -f "$part"
        echo "download.sh: error: $url: sha256 does not start with $sha (corrupt or wrong file); nothing was written" >&2
        return 1
    fi
    mv "$part" "$target"
    echo "saved $target"
}

failed=""
for role in $ROLES; do
    row=$(awk -F '\t' -v r="$role" '$1 == r' models/weights.tsv)
    [ -n "$row" ] || { echo "download.sh: error: no row $role in models/weights.tsv" >&2; exit 2; }
    mirror=$(printf '%s\n' "$row" | cut -f6)
    url=$(printenv "$mirror" || printf '%s\n' "$row" | cut -f3)
    sha=$(printenv "${mirror%_URL}_SHA256" || printf '%s\n' "$row" | cut -f4)
    trap 'rm -f "$DEST"/*/*.part.$$; exit 130' INT TERM
    fetch "$url" "$DEST/$(printf '%s\n' "$row" | cut -f5)" "$sha" || failed="$failed $role"
done
if [ -n "$failed" ]; then
    echo "download.sh: failed:$failed; every other file is in place" >&2
    exit 1
fi
