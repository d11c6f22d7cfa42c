//! A process-wide allocator setting for programs that deliver big rows.

/// Allocations of at least this many bytes get mappings of their own once
/// [`release_large_allocations`] ran.
pub const LARGE_ALLOCATION: usize = 4 << 20;

/// Makes glibc's allocator give every allocation of [`LARGE_ALLOCATION`] bytes or more a
/// mapping of its own, returned to the system when freed.
///
/// By default glibc raises that threshold each time such a block is freed (up to 32 MB);
/// from then on multi-megabyte rows are carved from per-thread arenas, which keep the memory
/// after the row is delivered, so a process delivering 10 MB rows one at a time grows to
/// several rows' worth per thread. The `pgevents` daemon calls this at start; a program that
/// delivers big rows through the library may call it once, early (or set glibc's
/// `MALLOC_MMAP_THRESHOLD_`). Rows smaller than the threshold are not affected. Does nothing
/// where the allocator is not glibc's.
pub fn release_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt changes an allocator setting; glibc allows it at any time, from any
    // thread, and the value is a valid threshold.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, LARGE_ALLOCATION as libc::c_int);
    }
}
