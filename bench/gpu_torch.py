"""The PyTorch/diffusers peer of bench/src/bin/gpu_check.rs: the same UNet (loaded from the
directory gpu-check saved), the same batch, timed the same way on the same device: the CFG
sampling step (one forward of [uncond; cond] plus u + w (c - u)) and the training step (forward,
MSE against the noise, backward, clip_grad_norm_(1.0), AdamW). Prints one JSON object.

Float32 throughout by default, as ldmscale computes; --tf32 lets cuDNN and cuBLAS use TF32
(PyTorch's default for convolutions) to show what that buys."""
import argparse
import json
import statistics
import time

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--latent", type=int, default=32)
    p.add_argument("--tokens", type=int, default=77)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--tf32", action="store_true")
    a = p.parse_args()
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    torch.backends.cudnn.allow_tf32 = a.tf32
    torch.manual_seed(0)

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    model = UNet2DConditionModel.from_pretrained(a.model).float().to(dev)
    dim = model.config.cross_attention_dim
    b, l = a.batch, a.latent

    model.eval()
    x = torch.randn(2 * b, 4, l, l, device=dev)
    ctx = torch.randn(2 * b, a.tokens, dim, device=dev)
    t = torch.tensor([float(37 * i % 1000) for i in range(2 * b)], device=dev)
    cfg = []
    with torch.no_grad():
        for rep in range(a.warmup + a.reps):
            sync()
            s = time.perf_counter()
            out = model(x, t, ctx).sample
            u, c = out[:b], out[b:]
            guided = u + 7.5 * (c - u)
            guided.cpu()
            if rep >= a.warmup:
                cfg.append((time.perf_counter() - s) * 1e3)

    model.train()
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    x0 = torch.randn(b, 4, l, l, device=dev)
    noise = torch.randn(b, 4, l, l, device=dev)
    ctx = torch.randn(b, a.tokens, dim, device=dev)
    tt = torch.tensor([91 * i % 1000 for i in range(b)], device=dev)
    train, fwd_bwd, warmup_s, losses = [], [], 0.0, []
    for rep in range(a.warmup + a.reps):
        sync()
        s = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        noisy = sched.add_noise(x0, noise, tt)
        loss = torch.nn.functional.mse_loss(model(noisy, tt, ctx).sample, noise)
        loss.backward()
        losses.append(loss.item())
        sync()
        g = (time.perf_counter() - s) * 1e3
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sync()
        total = (time.perf_counter() - s) * 1e3
        if rep >= a.warmup:
            train.append(total)
            fwd_bwd.append(g)
        else:
            warmup_s += total / 1e3
    print(json.dumps({
        "impl": f"torch-{torch.__version__}",
        "width": model.config.block_out_channels[0],
        "device": str(dev),
        "gpu": torch.cuda.get_device_name(dev) if cuda else None,
        "tf32": a.tf32,
        "cfg_step_ms": statistics.median(cfg),
        "train_step_ms": statistics.median(train),
        "train_fwd_bwd_ms": statistics.median(fwd_bwd),
        "train_optimizer_ms": statistics.median(train) - statistics.median(fwd_bwd),
        "train_warmup_s": warmup_s,
        "losses": losses,
    }))


if __name__ == "__main__":
    main()
