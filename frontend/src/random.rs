//! Random bytes from the kernel's generator and unique job ids (no extra crate needed).

use std::collections::hash_map::RandomState;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
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
/// counter through SipHash keyed once per process from the kernel's generator (std's
/// `RandomState`), no system call per id. Distinct counters never collide within a process;
/// across restarts, as with random ids, only by chance (64 bits).
pub fn new_job_id() -> String {
    static KEY: OnceLock<RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = KEY.get_or_init(RandomState::new).build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hex(&hasher.finish().to_be_bytes())
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

    #[test]
    fn hex_is_lowercase_and_padded() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
    }
}
