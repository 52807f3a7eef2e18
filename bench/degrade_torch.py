#!/usr/bin/env python3
"""Peer side of bench/degrade.sh: Real-ESRGAN's degradation on CPU torch with BasicSR 1.4.2's own
functions: RealESRGANDataset's three kernels per image (random_mixed_kernels /
circular_lowpass_kernel, as tools/fixtures/make_degradation_fixtures.py draws them), then
RealESRGANModel.feed_data's synthesis on a batch (USMSharp, filter2D, F.interpolate,
random_add_gaussian_noise_pt / random_add_poisson_noise_pt, DiffJPEG), x4plus options. As in
feed_data, the resize scales and modes, the noise kind, the second blur and the final order are
drawn once per batch; kernels, noise strengths and JPEG qualities per image.
Prints one JSON line: images, batch, threads, seconds, images_per_s."""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "fixtures"))
import basicsr_shim  # noqa: F401,E402  (must precede basicsr)
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from basicsr.data.degradations import (  # noqa: E402
    random_add_gaussian_noise_pt, random_add_poisson_noise_pt)
from basicsr.utils import DiffJPEG, USMSharp  # noqa: E402
from basicsr.utils.img_process_util import filter2D  # noqa: E402
from make_degradation_fixtures import dataset_kernels, pattern_image  # noqa: E402

MODES = ["area", "bilinear", "bicubic"]


def resize_scale(prob, lo, hi):
    kind = random.choices(["up", "down", "keep"], prob)[0]
    return np.random.uniform(1, hi) if kind == "up" else np.random.uniform(lo, 1) if kind == "down" else 1


def noise(x, sigma, poisson):
    if np.random.uniform() < 0.5:
        return random_add_gaussian_noise_pt(x, sigma_range=sigma, clip=True, rounds=False, gray_prob=0.4)
    return random_add_poisson_noise_pt(x, scale_range=poisson, gray_prob=0.4, clip=True, rounds=False)


def compress(x, jpeger):
    quality = x.new_zeros(x.size(0)).uniform_(30, 95)
    # DiffJPEG hands back a non-contiguous batch on current torch, which filter2D's .view
    # refuses; the copy costs little beside the rest.
    return jpeger(torch.clamp(x, 0, 1), quality=quality).contiguous()


def degrade(gt, usm_sharpener, jpeger):
    """Kernels as the dataset draws them, then feed_data on the batch `gt` (B, 3, H, W)."""
    kernels = [dataset_kernels() for _ in range(gt.size(0))]
    k1, k2, sinc = (torch.cat([k[i] for k in kernels]) for i in range(3))
    h, w = gt.shape[2:]
    out = filter2D(usm_sharpener(gt), k1)
    out = F.interpolate(out, scale_factor=resize_scale([0.2, 0.7, 0.1], 0.15, 1.5), mode=random.choice(MODES))
    out = compress(noise(out, (1, 30), (0.05, 3)), jpeger)
    if np.random.uniform() < 0.8:
        out = filter2D(out, k2)
    scale = resize_scale([0.3, 0.4, 0.3], 0.3, 1.2)
    out = F.interpolate(out, size=(int(h / 4 * scale), int(w / 4 * scale)), mode=random.choice(MODES))
    out = noise(out, (1, 25), (0.05, 2.5))
    if np.random.uniform() < 0.5:
        out = F.interpolate(out, size=(h // 4, w // 4), mode=random.choice(MODES))
        out = compress(filter2D(out, sinc), jpeger)
    else:
        out = compress(out, jpeger)
        out = F.interpolate(out, size=(h // 4, w // 4), mode=random.choice(MODES))
        out = filter2D(out, sinc)
    return torch.clamp((out * 255.0).round(), 0, 255) / 255.0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-usm", action="store_true",
                        help="identity in place of USMSharp (not Real-ESRGAN's pipeline: shows where its time goes)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    hr = torch.from_numpy(pattern_image(args.size).astype(np.float32) / 255.0).permute(2, 0, 1)
    gt = hr[None].repeat(args.batch, 1, 1, 1).contiguous()
    usm_sharpener = (lambda x: x) if args.skip_usm else USMSharp()
    jpeger = DiffJPEG(differentiable=False)
    batches = max(1, args.images // args.batch)
    with torch.no_grad():
        degrade(gt, usm_sharpener, jpeger)  # warm-up
        start = time.perf_counter()
        for _ in range(batches):
            lr = degrade(gt, usm_sharpener, jpeger)
        seconds = time.perf_counter() - start
    assert lr.shape == (args.batch, 3, args.size // 4, args.size // 4), lr.shape
    images = batches * args.batch
    print(json.dumps(dict(images=images, batch=args.batch, threads=torch.get_num_threads(),
                          seconds=seconds, images_per_s=images / seconds)))


if __name__ == "__main__":
    sys.exit(main())
