//! glibc's allocator, told to hand large freed blocks back to the system
//! at once: the project's only `unsafe` code, one FFI call.
//!
//! glibc serves a request of 128 KiB or more with a mapping of its own,
//! unmapped when freed, but raises that threshold to the size of every
//! such block freed (up to 32 MiB). After the first fetch answer a member
//! frees (up to `--fetch-max-bytes` per partition), answers of that size
//! come from the heap arenas of whichever threads the runtime ran them on
//! and stay there, split around small blocks that live longer. Setting
//! the threshold explicitly turns that adjustment off. Measured on a
//! 3,000,000-event fold (docs/benchmarks.md): peak RSS 122-135 MiB
//! without, 96-98 MiB with, for about 0.5 CPU-seconds more system time
//! per million events (page faults of the fresh mappings).
//!
//! Only `consume` asks for it: the producing commands allocate a batch
//! buffer per request, where the system time would show and memory does
//! not matter. On other C libraries (musl, in the static binary, returns
//! freed memory by itself) it does nothing.

/// The size from which a block is mapped on its own, glibc's default
/// before it adjusts it.
pub const MAP_FROM_BYTES: usize = 128 * 1024;

/// Fixes glibc's mmap threshold at [`MAP_FROM_BYTES`]. Returns whether
/// the allocator took it (false elsewhere than glibc).
pub fn hand_back_large_blocks() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        #[allow(unsafe_code)]
        // SAFETY: mallopt only changes a parameter of the allocator, under
        // its own lock; it is safe to call at any time from any thread.
        let taken = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MAP_FROM_BYTES as libc::c_int) };
        taken == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// This process's resident set in bytes (statm's second field, pages).
    fn resident() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
        let pages: usize = statm
            .split(' ')
            .nth(1)
            .expect("field")
            .parse()
            .expect("pages");
        pages * 4096
    }

    /// A large block handed back by the allocator and touched in full.
    fn touched(len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        for i in (0..len).step_by(4096) {
            v[i] = 1;
        }
        std::hint::black_box(v)
    }

    /// Once fixed, a block freed after a larger one (which would have
    /// raised glibc's threshold past it) still leaves the resident set.
    #[test]
    fn a_freed_large_block_leaves_the_resident_set() {
        assert!(hand_back_large_blocks(), "glibc takes the threshold");
        drop(touched(24 << 20));
        let before = resident();
        let block = touched(8 << 20);
        assert!(resident() >= before + (7 << 20), "the block is resident");
        drop(block);
        let after = resident();
        assert!(
            after < before + (1 << 20),
            "freed, it left: {before} bytes before, {after} after"
        );
    }
}
