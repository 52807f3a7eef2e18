//! Output buffers for the kernels' callers.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// Elements zeroed per task.
const ZERO_BLOCK: usize = 1 << 16;

/// `len` zeros, written by every thread of the pool: a large `vec![0.0; len]` is one `memset`
/// on the calling thread while the others wait for the kernel it feeds.
pub fn zeroed(len: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(ZERO_BLOCK)
        .for_each(|block| block.fill(MaybeUninit::new(0.0)));
    // SAFETY: all `len` elements were initialised just above.
    unsafe { v.set_len(len) };
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_element_is_zero() {
        for len in [0, 1, ZERO_BLOCK - 1, 3 * ZERO_BLOCK + 5] {
            // Reuse memory that held other values.
            drop(vec![7f32; len]);
            let v = zeroed(len);
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|&x| x == 0.0), "{len}");
        }
    }
}
