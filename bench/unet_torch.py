"""The PyTorch/diffusers peer of bench/src/unet_bench.rs: the same UNet (loaded from the
directory the Rust bench saved), the same batch, timed the same way. Prints one JSON object."""
import argparse
import json
import statistics
import time

import torch
from diffusers import UNet2DConditionModel


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--latent", type=int, default=32)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (f32 weights), as ldmscale --precision bf16")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = UNet2DConditionModel.from_pretrained(a.model).float()
    dim = model.config.cross_attention_dim
    b, l = a.batch, a.latent

    model.eval()
    x = torch.randn(2 * b, 4, l, l)
    ctx = torch.randn(2 * b, a.tokens, dim)
    t = torch.tensor([float(37 * i % 1000) for i in range(2 * b)])
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16)
    fwd = []
    with torch.no_grad(), autocast():
        for rep in range(a.reps + 1):
            s = time.perf_counter()
            model(x, t, ctx)
            if rep:
                fwd.append((time.perf_counter() - s) * 1e3)

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    x = torch.randn(b, 4, l, l)
    noise = torch.randn(b, 4, l, l)
    ctx = torch.randn(b, a.tokens, dim)
    t = torch.tensor([float(91 * i % 1000) for i in range(b)])
    train = []
    for rep in range(a.reps + 1):
        s = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast():
            pred = model(x, t, ctx).sample
        loss = ((pred.float() - noise) ** 2).mean()
        loss.backward()
        opt.step()
        if rep:
            train.append((time.perf_counter() - s) * 1e3)
    print(json.dumps({
        "backend": f"torch-{torch.__version__}",
        "threads": a.threads,
        "precision": "bf16" if a.bf16 else "f32",
        "cfg_step_ms": statistics.median(fwd),
        "train_step_ms": statistics.median(train),
    }))


if __name__ == "__main__":
    main()
