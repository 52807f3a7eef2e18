"""The PyTorch peer of crates/kernels/examples/attention_bench.rs: scaled_dot_product_attention
forward, and its backward through autograd, on the same shapes, and the forward on bf16 inputs
(what bf16 autocast runs) (heads split out of
[batch, tokens, heads * head_dim] as diffusers does). Prints one JSON line per shape."""
import argparse
import json
import time

import torch
import torch.nn.functional as F


def min_ms(reps, f):
    f()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f()
        best = min(best, (time.perf_counter() - t) * 1e3)
    return best


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shapes", required=True, help="JSON list of [batch, heads, queries, keys, head_dim]")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    for b, h, nq, nk, d in json.loads(a.shapes):
        split = lambda x, n: x.view(b, n, h, d).transpose(1, 2)
        q = torch.randn(b, nq, h * d, requires_grad=True)
        k = torch.randn(b, nk, h * d, requires_grad=True)
        v = torch.randn(b, nk, h * d, requires_grad=True)
        d_out = torch.randn(b, h, nq, d)

        def forward():
            with torch.no_grad():
                F.scaled_dot_product_attention(split(q, nq), split(k, nk), split(v, nk))

        out = F.scaled_dot_product_attention(split(q, nq), split(k, nk), split(v, nk))

        def backward():
            torch.autograd.grad(out, (q, k, v), d_out, retain_graph=True)

        # bf16 autocast hands SDPA bf16 projections.
        q16, k16, v16 = (x.detach().to(torch.bfloat16) for x in (q, k, v))

        def forward_bf16():
            with torch.no_grad():
                F.scaled_dot_product_attention(split(q16, nq), split(k16, nk), split(v16, nk))

        print(json.dumps({"shape": [b, h, nq, nk, d], "forward_ms": min_ms(a.reps, forward),
                          "backward_ms": min_ms(a.reps, backward),
                          "forward_bf16_ms": min_ms(a.reps, forward_bf16)}))


if __name__ == "__main__":
    main()
