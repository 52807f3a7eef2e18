//! Instruction-set selection: kernels are written once as `#[inline(always)]` functions generic
//! over [`Simd`] on fixed-width lane arrays, and instantiated inside functions compiled for
//! AVX-512 or AVX2+FMA (chosen at run time), so the lane loops become vector instructions
//! without per-call feature checks in the inner loops.

/// Lanes per vector step: one AVX-512 register of f32, two AVX2 ones.
pub const LANES: usize = 16;

/// What differs between instruction sets inside a kernel.
pub trait Simd {
    /// `a * b + c`, fused where the target has FMA.
    fn fma(a: f32, b: f32, c: f32) -> f32;
}

/// Targets with fused multiply-add (AVX2+FMA, AVX-512).
pub struct Fused;
impl Simd for Fused {
    #[inline(always)]
    fn fma(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// Any other target: separate multiply and add (`mul_add` would call libm).
pub struct Plain;
impl Simd for Plain {
    #[inline(always)]
    fn fma(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// `len` values from `src` to `dst`; below 32 values as fixed-size copies (16, 8, 4, 2 and 1
/// values, no loop that the compiler would turn back into a call), which compile to vector
/// moves: runs of a few vectors whose length is known only at run time otherwise become calls
/// to `memcpy`, which cost more than the copy.
///
/// # Safety
/// `src` and `dst` hold `len` values each and do not overlap.
#[inline(always)]
pub(crate) unsafe fn copy_short(src: *const f32, dst: *mut f32, len: usize) {
    let mut at = 0;
    // SAFETY: every copy lies inside the first `len` values (the caller's contract).
    unsafe {
        if len >= 32 {
            std::ptr::copy_nonoverlapping(src, dst, len);
            return;
        }
        if len - at >= 16 {
            std::ptr::copy_nonoverlapping(src.add(at), dst.add(at), 16);
            at += 16;
        }
        if len - at >= 8 {
            std::ptr::copy_nonoverlapping(src.add(at), dst.add(at), 8);
            at += 8;
        }
        if len - at >= 4 {
            std::ptr::copy_nonoverlapping(src.add(at), dst.add(at), 4);
            at += 4;
        }
        if len - at >= 2 {
            std::ptr::copy_nonoverlapping(src.add(at), dst.add(at), 2);
            at += 2;
        }
        if len - at == 1 {
            *dst.add(at) = *src.add(at);
        }
    }
}

/// `dst[..src.len()] = src` by [`copy_short`].
#[inline(always)]
pub(crate) fn copy_prefix(dst: &mut [f32], src: &[f32]) {
    assert!(dst.len() >= src.len(), "copy_prefix: destination too short");
    // SAFETY: both hold `src.len()` values; `&mut dst` cannot overlap `src`.
    unsafe { copy_short(src.as_ptr(), dst.as_mut_ptr(), src.len()) }
}

/// The widest instruction set this CPU has, detected once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 F/VL with FMA.
    Avx512,
    /// AVX2 with FMA.
    Avx2,
    /// Baseline.
    Baseline,
}

/// The instruction set kernels run with.
pub fn isa() -> Isa {
    use std::sync::OnceLock;
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512vl")
                && std::is_x86_feature_detected!("fma")
            {
                return Isa::Avx512;
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Baseline
    })
}

/// Defines `fn $name(args)` that runs `$kernel::<S>(args)` compiled for the detected
/// instruction set (the kernel must be `#[inline(always)]` so that it is compiled into each
/// feature-enabled copy).
macro_rules! multiversion {
    ($vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $kernel:ident) => {
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512($($arg: $ty),*) {
                    $kernel::<$crate::simd::Fused>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) {
                    $kernel::<$crate::simd::Fused>($($arg),*)
                }
                match $crate::simd::isa() {
                    // SAFETY: the features were detected on this CPU.
                    $crate::simd::Isa::Avx512 => unsafe { avx512($($arg),*) },
                    $crate::simd::Isa::Avx2 => unsafe { avx2($($arg),*) },
                    $crate::simd::Isa::Baseline => $kernel::<$crate::simd::Plain>($($arg),*),
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                $kernel::<$crate::simd::Plain>($($arg),*)
            }
        }
    };
}
pub(crate) use multiversion;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_copies_copy_the_prefix_and_nothing_else() {
        let src: Vec<f32> = (0..40).map(|i| i as f32).collect();
        for len in 0..=src.len() {
            let mut dst = vec![-1f32; src.len() + 1];
            copy_prefix(&mut dst, &src[..len]);
            assert_eq!(dst[..len], src[..len], "{len}");
            assert!(
                dst[len..].iter().all(|&x| x == -1.0),
                "{len} wrote past the run"
            );
        }
    }
}
