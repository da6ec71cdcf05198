//! What every fuzz target shares: an allocator that refuses any single allocation above
//! [`MAX_ALLOCATION`], so that an input making a parser allocate without bound is reported
//! as a crash (Rust aborts on a refused allocation, and libFuzzer saves the input), also
//! without a sanitizer's malloc hooks (`-malloc_limit_mb` needs those). Each target links it
//! with `use fabric_fuzz as _;`.

use std::alloc::{GlobalAlloc, Layout, System};

/// The largest single allocation allowed: far above anything a parser needs for a
/// fuzz input (at most a few KiB), far below what would exhaust the machine.
pub const MAX_ALLOCATION: usize = 256 << 20;

/// [`System`], refusing allocations above [`MAX_ALLOCATION`].
pub struct Capped;

// SAFETY: forwards to `System`, except that it refuses (returns null for) oversized layouts,
// which `GlobalAlloc` allows.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            return std::ptr::null_mut();
        }
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > MAX_ALLOCATION {
            return std::ptr::null_mut();
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Capped = Capped;
