//! The process's allocator: mimalloc (see the workspace's Cargo.toml for
//! why), and how it is tuned for a gateway.

/// The global allocator of konvertd, konvertctl and everything linking
/// this crate.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long freed memory stays with the process before mimalloc returns it
/// to the system, in milliseconds.
///
/// A gateway frees and reallocates the same large buffers with every
/// message (an envelope of 1 MiB is read, sealed, stored and decrypted
/// through buffers of its size). With mimalloc's default (1 s, and pages
/// of large blocks returned at once), each such buffer came back from the
/// kernel as fresh pages to be zeroed: at 1 MiB per message a fifth of the
/// CPU was the kernel's `clear_page` and page faults fell from 8,500 to
/// 600 per 48 messages with a longer delay. Memory a gateway used within
/// the last 10 s is likely to be needed again; what stays idle longer goes
/// back.
pub const PURGE_DELAY_MS: i64 = 10_000;

/// `mi_option_purge_delay` in mimalloc.h's `mi_option_e` (libmimalloc-sys
/// names no constant for it). mimalloc keeps the numbering stable, holding
/// retired options' places with `deprecated_*` entries: it precedes
/// `use_numa_nodes` (16), which the crate does name (checked by a test,
/// which also reads mimalloc's default back through this number).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Apply the gateway's allocator settings (idempotent; called when a node
/// starts).
#[allow(unsafe_code)]
pub fn tune() {
    // SAFETY: `mi_option_set` stores one option value (an atomic in
    // mimalloc); it may be called at any time from any thread, and the purge
    // delay is read again each time memory would be returned.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS as std::os::raw::c_long);
    }
}

/// The purge delay in effect, in milliseconds.
#[allow(unsafe_code, clippy::useless_conversion)] // (c_long is i32 on some targets)
pub fn purge_delay_ms() -> i64 {
    // SAFETY: `mi_option_get` reads one option value; callable at any time.
    i64::from(unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_where_mimalloc_numbers_it_and_takes_the_setting() {
        assert_eq!(
            libmimalloc_sys::mi_option_use_numa_nodes - 1,
            MI_OPTION_PURGE_DELAY
        );
        // mimalloc v3's default purge delay (1 s), unless this process was
        // started with MIMALLOC_PURGE_DELAY or has tuned it already.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert!(
                [1000, PURGE_DELAY_MS].contains(&purge_delay_ms()),
                "{}",
                purge_delay_ms()
            );
        }
        tune();
        assert_eq!(purge_delay_ms(), PURGE_DELAY_MS);
        // Allocating and freeing large blocks still works with it.
        for n in [1usize << 10, 1 << 20, 5 << 20] {
            let v = vec![7u8; n];
            assert_eq!(v.iter().map(|&b| u64::from(b)).sum::<u64>(), 7 * n as u64);
        }
    }
}
