//! Random bytes from the kernel's generator and unique job ids (no extra crate needed).

use std::collections::hash_map::RandomState;
use std::fs::File;
use std::hash::BuildHasher;
use std::io::{self, Read};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// `N` random bytes from `/dev/urandom`.
pub fn random_bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// Lowercase hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut text, byte| {
            let _ = write!(text, "{byte:02x}");
            text
        })
}

/// A job id: 16 lowercase hex characters. Both daemons log it as `job_id`.
///
/// Uniqueness matters (logs, per-job directories), secrecy does not, and every request asks
/// for one, refused ones too (under a flood of retries, tens of thousands a second): a
/// counter, mixed with a key drawn once per process (std's `RandomState`, keyed from the
/// kernel's generator) through a bijection, no system call per id. Distinct counters give
/// distinct ids within a process; across restarts ids meet only by chance (64 bits), as
/// random ones would.
pub fn new_job_id() -> String {
    static KEY: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let key = *KEY.get_or_init(|| RandomState::new().hash_one(0u64));
    hex(&scramble(key ^ COUNTER.fetch_add(1, Ordering::Relaxed)).to_be_bytes())
}

/// SplitMix64's finalizer: a bijection of `u64` (each step, a shift-xor or a product by
/// an odd constant, can be undone) under which consecutive inputs look unrelated.
fn scramble(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_sixteen_hex_characters_and_differ() {
        let first = new_job_id();
        assert_eq!(first.len(), 16);
        assert!(
            first
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert!(nox_protocol::validate_job_id(&first));
        assert_ne!(first, new_job_id());
    }

    /// `scramble` undone step by step: so no two counters share an id.
    fn unscramble(mut z: u64) -> u64 {
        let undo_shift = |y: u64, s: u32| {
            let mut x = y;
            for _ in 0..64 / s {
                x = y ^ (x >> s);
            }
            x
        };
        let inverse = |c: u64| {
            let mut i = c; // Newton's iteration for the inverse modulo 2^64 of an odd c
            for _ in 0..6 {
                i = i.wrapping_mul(2u64.wrapping_sub(c.wrapping_mul(i)));
            }
            i
        };
        z = undo_shift(z, 31);
        z = undo_shift(z.wrapping_mul(inverse(0x94d0_49bb_1331_11eb)), 27);
        undo_shift(z.wrapping_mul(inverse(0xbf58_476d_1ce4_e5b9)), 30)
    }

    #[test]
    fn job_ids_come_from_a_bijection_of_the_counter() {
        for x in [
            0,
            1,
            2,
            0xdead_beef,
            u64::MAX,
            1 << 63,
            0x0123_4567_89ab_cdef,
        ] {
            assert_eq!(unscramble(scramble(x)), x, "{x:#x}");
        }
        assert_ne!(scramble(0), scramble(1));
    }

    #[test]
    fn hex_is_lowercase_and_padded() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
    }
}
