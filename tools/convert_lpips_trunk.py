"""Converts a torchvision AlexNet or VGG16 state dict (.pth) to the safetensors trunk that
`ldmscale lpips --trunk` reads (ldmscale never unpickles at run time).

    python tools/convert_lpips_trunk.py alexnet-owt-7be5be79.pth alex-trunk.safetensors
    python tools/convert_lpips_trunk.py vgg16-397923af.pth vgg-trunk.safetensors

The inputs are the ImageNet weights torchvision caches under ~/.cache/torch/hub/checkpoints/
when `torchvision.models.alexnet(weights="DEFAULT")` / `vgg16(weights="DEFAULT")` first runs, as
the `lpips` package uses them. Only `features.*` is kept (LPIPS taps the convolutional part).
Needs torch and safetensors (e.g. the fixture venv of tools/setup-python.sh).
"""

import sys

import torch
from safetensors.torch import save_file


def main(src, dst):
    # weights_only: tensors and containers only, nothing executable is unpickled.
    state = torch.load(src, map_location="cpu", weights_only=True)
    features = {k: v.float().contiguous() for k, v in state.items() if k.startswith("features.")}
    if not features:
        sys.exit(f"{src}: no features.* tensors; expected a torchvision alexnet / vgg16 state dict")
    save_file(features, dst)
    print(f"{dst}: {len(features)} tensors, {sum(v.numel() for v in features.values())} parameters")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
