//! The RealESRGAN two-stage degradation (x4 real-world super-resolution), operation by operation
//! as BasicSR / Real-ESRGAN compute them, on float RGB images.

mod float_image;
mod jpeg;
mod kernels;
mod noise;
mod pipeline;
mod random_kernels;
mod resize;
mod rows;
mod usm;

pub use float_image::FloatImage;
pub use jpeg::{JpegPadding, jpeg, jpeg_padded, quality_to_factor};
pub use kernels::{Kernel, KernelShape, filter2d};
pub use noise::{
    Noise, NoiseParams, add_gaussian_noise, add_poisson_noise, poisson, standard_normal,
};
pub use pipeline::{RealEsrganParams, ResizeParams, realesrgan, seed_for, set_seed};
pub use random_kernels::{BlurParams, FinalSincParams, KernelDraw, KernelFamily};
pub use resize::{ResizeMode, ResizeTo, resize};
pub use usm::{UsmParams, filter_separable, gaussian_kernel_1d, usm_sharp};
