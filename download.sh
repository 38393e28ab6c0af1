#!/bin/sh
# Download the released AHIQ PIPAL checkpoint and the pinned timm backbone weights, for offline use:
#   checkpoints/ahiq_pipal/AHIQ_vit_p8_epoch33.pth                          (sha256 checked)
#   checkpoints/backbones/vit_base_patch8_224.augreg_in21k_ft_in1k.safetensors
#   checkpoints/backbones/resnet50.a1_in1k.safetensors
# test.py and train.py use the backbone files automatically when they are there (or pass --vit_weights/--resnet_weights).
# `sh download.sh --patch16` also fetches the ViT-B/16 weights. Files already present are kept (idempotent).
# Mirrors: AHIQ_CKPT_URL, AHIQ_CKPT_SHA256 (expected sha256 or a prefix of it), AHIQ_VIT8_URL, AHIQ_VIT16_URL,
# AHIQ_RESNET_URL; AHIQ_CHECKPOINTS_DIR changes the target folder (default: checkpoints next to this script).
set -eu
cd "$(dirname "$0")"
DEST=${AHIQ_CHECKPOINTS_DIR:-checkpoints}
# The addresses and checksums live in models/weights.tsv (hubconf.py reads the same table).
field() { awk -F '\t' -v n="$1" -v f="$2" '$1 == n { print $f }' models/weights.tsv; }
CKPT_URL=${AHIQ_CKPT_URL:-$(field ahiq_pipal 2)}
CKPT_SHA256=${AHIQ_CKPT_SHA256:-$(field ahiq_pipal 3)}
VIT8_URL=${AHIQ_VIT8_URL:-$(field vit_base_patch8_224.augreg_in21k_ft_in1k 2)}
VIT16_URL=${AHIQ_VIT16_URL:-$(field vit_base_patch16_224.augreg_in21k_ft_in1k 2)}
RESNET_URL=${AHIQ_RESNET_URL:-$(field resnet50.a1_in1k 2)}

fail() { echo "download.sh: error: $*" >&2; exit 1; }

sha_ok() {  # sha_ok FILE EXPECTED_PREFIX
    [ -z "$2" ] && return 0
    actual=$(sha256sum "$1" | cut -d' ' -f1)
    case "$actual" in "$2"*) return 0 ;; *) return 1 ;; esac
}

fetch() {  # fetch URL TARGET [SHA256_PREFIX]
    url=$1; target=$2; sha=${3:-}
    if [ -f "$target" ]; then
        sha_ok "$target" "$sha" || fail "$target exists but its sha256 does not start with $sha; move it away and rerun"
        echo "already present: $target"
        return 0
    fi
    mkdir -p "$(dirname "$target")"
    part="$target.part.$$"
    trap 'rm -f "$part"' EXIT INT TERM
    echo "downloading $url"
    if command -v curl >/dev/null 2>&1; then
        curl -fL --retry 2 --connect-timeout 20 -sS -o "$part" "$url" || ok=no
    else
        wget -q -T 20 -t 3 -O "$part" "$url" || ok=no
    fi
    if [ "${ok:-yes}" = no ]; then
        rm -f "$part"
        fail "cannot download $url (offline?). Run download.sh on a connected machine and copy $DEST/ here, or set the AHIQ_*_URL variables to a mirror"
    fi
    if ! sha_ok "$part" "$sha"; then
        rm -f "$part"
        fail "$url: sha256 does not start with $sha (corrupt or wrong file); nothing was written"
    fi
    mv "$part" "$target"
    trap - EXIT INT TERM
    echo "saved $target"
}

fetch "$CKPT_URL" "$DEST/ahiq_pipal/AHIQ_vit_p8_epoch33.pth" "$CKPT_SHA256"
fetch "$VIT8_URL" "$DEST/backbones/vit_base_patch8_224.augreg_in21k_ft_in1k.safetensors"
fetch "$RESNET_URL" "$DEST/backbones/resnet50.a1_in1k.safetensors"
if [ "${1:-}" = "--patch16" ]; then
    fetch "$VIT16_URL" "$DEST/backbones/vit_base_patch16_224.augreg_in21k_ft_in1k.safetensors"
fi
