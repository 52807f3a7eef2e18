//! The global allocator of the ldmscale binaries: jemalloc, configured so that the large,
//! short-lived tensor buffers of a training or sampling step are reused instead of being handed
//! back to the kernel and faulted in again (zeroing fresh pages was a third of a UNet step).
//!
//! Use it from a binary crate with
//! `#[global_allocator] static GLOBAL: ldmscale_alloc::TensorAllocator = ldmscale_alloc::TensorAllocator;`.

use std::alloc::{GlobalAlloc, Layout};

use tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: freed pages are never returned to the kernel (a
/// decay of -1), so a step's buffers come back warm at the next step instead of being purged and
/// faulted in again; the resident size stays at the peak of the run. Any decay above zero also
/// makes buffers over 8 MiB go to an arena that purges them at once.
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: Option<&'static u8> = Some(&b"dirty_decay_ms:-1,muzzy_decay_ms:-1\0"[0]);

/// Allocations at least this large are zeroed with `memset` rather than by jemalloc, which
/// zeroes a recycled large extent by purging it (`MADV_DONTNEED`): every page then faults and is
/// cleared by the kernel again on first touch.
const ZERO_BY_MEMSET_FROM: usize = 64 * 1024;

/// jemalloc, zeroing large allocations in user space (see [`ZERO_BY_MEMSET_FROM`]).
pub struct TensorAllocator;

unsafe impl GlobalAlloc for TensorAllocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { Jemalloc.alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() < ZERO_BY_MEMSET_FROM {
            return unsafe { Jemalloc.alloc_zeroed(layout) };
        }
        let ptr = unsafe { Jemalloc.alloc(layout) };
        if !ptr.is_null() {
            unsafe { std::ptr::write_bytes(ptr, 0, layout.size()) };
        }
        ptr
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { Jemalloc.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe { Jemalloc.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_zeroed_allocations_are_zero_after_reuse() {
        let a = TensorAllocator;
        let layout = Layout::from_size_align(4 << 20, 64).unwrap();
        unsafe {
            let p = a.alloc(layout);
            std::ptr::write_bytes(p, 0xAB, layout.size());
            a.dealloc(p, layout);
            let z = a.alloc_zeroed(layout);
            assert!(!z.is_null());
            let bytes = std::slice::from_raw_parts(z, layout.size());
            assert!(bytes.iter().all(|&b| b == 0));
            a.dealloc(z, layout);
        }
    }
}
