//! Times the convolution kernels on the UNet's convolution shapes (width 128, batch 8 for the
//! training step): `cargo run --release -p ldmscale-kernels --example conv_bench [reps]`.

mod common;

#[global_allocator]
static GLOBAL: ldmscale_alloc::TensorAllocator = ldmscale_alloc::TensorAllocator;

use common::{min_ms, reps_arg};
use ldmscale_kernels::{
    ConvAlgorithm, ConvShape, conv2d_backward, conv2d_forward, conv2d_forward_with,
};

fn main() {
    let reps = reps_arg(5);
    for (batch, c_in, c_out, size, kernel) in [
        (8, 128, 128, 32, 3),
        (8, 256, 256, 16, 3),
        (8, 256, 256, 8, 3),
        (8, 384, 128, 32, 1),
        // The quick study's width-32 UNet on 8x8 latents: a training batch, a CFG batch.
        (16, 32, 32, 8, 3),
        (64, 64, 64, 4, 3),
        (16, 64, 64, 16, 3),
        (16, 128, 128, 8, 3),
    ] {
        let s = ConvShape {
            batch,
            channels_in: c_in,
            height: size,
            width: size,
            channels_out: c_out,
            kernel_h: kernel,
            kernel_w: kernel,
            stride: [1, 1],
            padding: [kernel / 2, kernel / 2],
        };
        let x: Vec<f32> = (0..batch * c_in * size * size)
            .map(|i| (i % 13) as f32 * 0.1)
            .collect();
        let w: Vec<f32> = (0..s.weight_len()).map(|i| (i % 7) as f32 * 0.01).collect();
        let bias = vec![0.5f32; c_out];
        let d_out: Vec<f32> = (0..s.output_len()).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut out = vec![0f32; s.output_len()];
        let (mut dx, mut dw, mut db) =
            (vec![0f32; x.len()], vec![0f32; w.len()], vec![0f32; c_out]);
        let forward = min_ms(reps, || conv2d_forward(&x, &w, Some(&bias), s, &mut out));
        let backward = min_ms(reps, || {
            conv2d_backward(&x, &w, &d_out, s, Some(&mut dx), &mut dw, Some(&mut db))
        });
        let weights_only = min_ms(reps, || {
            conv2d_backward(&x, &w, &d_out, s, None, &mut dw, Some(&mut db))
        });
        let flop = 2.0 * (batch * c_out * c_in * kernel * kernel * size * size) as f64;
        if kernel == 3 {
            // Both algorithms side by side, in turn, whichever `conv2d_forward` picks.
            let mut time = |algorithm| {
                min_ms(reps, || {
                    conv2d_forward_with(algorithm, &x, &w, Some(&bias), s, &mut out)
                })
            };
            let direct = time(ConvAlgorithm::Direct);
            let winograd = time(ConvAlgorithm::WinogradF2);
            let winograd4 = time(ConvAlgorithm::WinogradF4);
            println!(
                "{batch}x{c_in}->{c_out} {size}px k3 forward: direct {direct:.2} ms, F(2x2, 3x3) {winograd:.2} ms ({:.2}x), F(4x4, 3x3) {winograd4:.2} ms ({:.2}x); chosen: {:?}",
                direct / winograd,
                direct / winograd4,
                ConvAlgorithm::for_shape(&s, false)
            );
        }
        println!(
            "{batch}x{c_in}->{c_out} {size}px k{kernel}: forward {forward:.2} ms ({:.0} GFLOP/s), backward {backward:.2} ms ({:.0} GFLOP/s: weights {weights_only:.2} ms, input {:.2} ms)",
            flop / forward / 1e6,
            2.0 * flop / backward / 1e6,
            backward - weights_only
        );
    }
}
