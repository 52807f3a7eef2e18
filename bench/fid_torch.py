#!/usr/bin/env python3
"""Peer side of bench/fid.sh: FID feature extraction over an image folder with pytorch-fid 0.3.0
(or clean-fid 0.1.35 for --mode clean) on the CPU, with the same Inception weights as ldmscale
(the TorchScript asset, handed to pytorch-fid under torchvision names as in
tools/fixtures/make_fid_fixtures.py). Prints one JSON line: images, seconds, images_per_s."""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def fixture_module():
    spec = importlib.util.spec_from_file_location("make_fid_fixtures",
                                                  ROOT / "tools" / "fixtures" / "make_fid_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--mode", choices=["pytorch-fid", "clean"], default="pytorch-fid")
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--workers", type=int, default=0,
                        help="DataLoader workers (0: decode in the main process, as ldmscale does)")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    fx = fixture_module()
    ts_module, ts_params = fx.load_torchscript()
    files = sorted(str(p) for p in Path(args.dir).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if args.mode == "pytorch-fid":
        from pytorch_fid.fid_score import calculate_activation_statistics
        model = fx.pytorch_fid_model(ts_params)
        start = time.perf_counter()
        calculate_activation_statistics(files, model, args.batch, 2048, "cpu", args.workers)
    else:
        from cleanfid.fid import get_files_features
        import numpy as np
        layers = ts_module.net.layers

        def clean_model(x):
            return layers((x - 128) / 128).view((x.shape[0], 2048))

        start = time.perf_counter()
        with torch.no_grad():
            feats = get_files_features(files, model=clean_model, num_workers=args.workers,
                                       batch_size=args.batch, device=torch.device("cpu"),
                                       mode="clean", verbose=False)
        np.mean(feats, axis=0), np.cov(feats, rowvar=False)
    seconds = time.perf_counter() - start
    print(json.dumps({"images": len(files), "seconds": seconds, "images_per_s": len(files) / seconds}))


if __name__ == "__main__":
    sys.exit(main())
