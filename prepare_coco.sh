#!/usr/bin/env bash
# Makes voc_coco_resnet101.pt and city_coco_resnet101.pt in the current folder from AdvSemiSeg's
# COCO-pretrained DeepLabV2, the initialisation behind the paper's numbers (use with --coco).
#
#   prepare_coco.sh                  download resnet101COCO-41f33a49.pth here, then convert
#   prepare_coco.sh PATH.pth         convert a copy fetched by hand (e.g. on an offline machine)
#
# Environment: PYTHON (default python3) runs the converter; COCO_URL replaces the download address.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
url="${COCO_URL:-http://vllab1.ucmerced.edu/~whung/adv-semi-seg/resnet101COCO-41f33a49.pth}"
expected_sha_prefix=41f33a49

if (( $# > 1 )); then
    echo "usage: $0 [resnet101COCO-41f33a49.pth]" >&2
    exit 2
fi

download() {  # download URL FILE: all or nothing, one line on failure
    local part="$2.part" reason
    if command -v curl >/dev/null 2>&1; then
        reason="$(curl -fsSL --connect-timeout 30 -o "$part" "$1" 2>&1)" || {
            rm -f "$part"; echo "${reason//$'\n'/ }"; return 1; }
    elif command -v wget >/dev/null 2>&1; then
        reason="$(wget -q --timeout=30 -O "$part" "$1" 2>&1)" || {
            rm -f "$part"; echo "wget failed ${reason//$'\n'/ }"; return 1; }
    else
        reason="$("$python" -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' \
            "$1" "$part" 2>&1)" || {
            rm -f "$part"; echo "$(tail -n 1 <<<"$reason")"; return 1; }
    fi
    mv -f "$part" "$2"
}

if (( $# == 1 )); then
    source="$1"
    if [[ ! -f "$source" ]]; then
        echo "error: $source: no such file" >&2
        exit 2
    fi
else
    source="$(basename "${url%%\?*}")"
    if [[ -f "$source" ]]; then
        echo "using $source already in $(pwd)"
    else
        echo "downloading $url"
        if ! reason="$(download "$url" "$source")"; then
            echo "error: cannot download $url ($reason); fetch it by hand and run: $0 PATH/TO/resnet101COCO-41f33a49.pth" >&2
            exit 1
        fi
    fi
fi

if command -v sha256sum >/dev/null 2>&1; then
    sha="$(sha256sum "$source" | cut -d ' ' -f 1)"
else
    sha="$("$python" -c 'import hashlib, sys; print(hashlib.file_digest(open(sys.argv[1], "rb"), "sha256").hexdigest())' "$source")"
fi
if [[ "$sha" != "$expected_sha_prefix"* ]]; then
    echo "warning: $source: SHA-256 $sha does not start with $expected_sha_prefix: not the original file? converting anyway" >&2
fi

"$python" "$script_dir/convert_coco.py" "$source" --dataset voc --output voc_coco_resnet101.pt
"$python" "$script_dir/convert_coco.py" "$source" --dataset city --output city_coco_resnet101.pt
