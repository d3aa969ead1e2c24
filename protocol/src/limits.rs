//! Per-job limits. A request may lower any limit, never raise it above the configured
//! ceiling; [`Limits::clamp`] is the one place that rule lives.

use serde::{Deserialize, Serialize};

/// Limits in force for one job. Every field is a hard value, never "unlimited".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Wall-clock time before the job and everything it forked are killed.
    pub timeout_ms: u64,
    /// CPU seconds (RLIMIT_CPU).
    pub cpu_seconds: u64,
    /// Address space in bytes (RLIMIT_AS).
    pub memory_bytes: u64,
    /// Processes of the sandbox user (RLIMIT_NPROC).
    pub max_processes: u64,
    /// Largest file the job may write (RLIMIT_FSIZE).
    pub max_file_bytes: u64,
    /// Open descriptors (RLIMIT_NOFILE).
    pub max_open_files: u64,
    /// Output captured per stream; past it the job is killed and the reply says truncated.
    pub max_output_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout_ms: 30_000,
            cpu_seconds: 30,
            memory_bytes: 1024 * 1024 * 1024,
            max_processes: 64,
            max_file_bytes: 64 * 1024 * 1024,
            max_open_files: 256,
            max_output_bytes: 1024 * 1024,
        }
    }
}

/// What a client asked for; `None` means "the ceiling".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitRequest {
    pub timeout_ms: Option<u64>,
    pub cpu_seconds: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub max_processes: Option<u64>,
    pub max_file_bytes: Option<u64>,
    pub max_open_files: Option<u64>,
    pub max_output_bytes: Option<u64>,
}

impl Limits {
    /// The limits for one job: each requested value, but never above `self` (the ceiling)
    /// and never below a floor that keeps an interpreter able to start at all.
    pub fn clamp(&self, request: &LimitRequest) -> Limits {
        let pick = |asked: Option<u64>, ceiling: u64, floor: u64| {
            asked
                .unwrap_or(ceiling)
                .min(ceiling)
                .max(floor.min(ceiling))
        };
        Limits {
            timeout_ms: pick(request.timeout_ms, self.timeout_ms, 1),
            cpu_seconds: pick(request.cpu_seconds, self.cpu_seconds, 1),
            memory_bytes: pick(request.memory_bytes, self.memory_bytes, 32 * 1024 * 1024),
            max_processes: pick(request.max_processes, self.max_processes, 1),
            max_file_bytes: pick(request.max_file_bytes, self.max_file_bytes, 0),
            max_open_files: pick(request.max_open_files, self.max_open_files, 16),
            max_output_bytes: pick(request.max_output_bytes, self.max_output_bytes, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_can_lower_but_never_raise_a_ceiling() {
        let ceiling = Limits::default();
        let asked = LimitRequest {
            timeout_ms: Some(1_000),
            memory_bytes: Some(u64::MAX),
            max_output_bytes: Some(10),
            ..LimitRequest::default()
        };
        let got = ceiling.clamp(&asked);
        assert_eq!(got.timeout_ms, 1_000);
        assert_eq!(got.memory_bytes, ceiling.memory_bytes);
        assert_eq!(got.max_output_bytes, 10);
        assert_eq!(got.cpu_seconds, ceiling.cpu_seconds);
    }

    #[test]
    fn absurdly_low_requests_are_raised_to_a_floor_that_lets_the_job_start() {
        let got = Limits::default().clamp(&LimitRequest {
            timeout_ms: Some(0),
            memory_bytes: Some(1),
            max_open_files: Some(0),
            ..LimitRequest::default()
        });
        assert_eq!(got.timeout_ms, 1);
        assert_eq!(got.memory_bytes, 32 * 1024 * 1024);
        assert_eq!(got.max_open_files, 16);
    }

    #[test]
    fn a_floor_never_lifts_a_value_above_a_lower_ceiling() {
        let ceiling = Limits {
            memory_bytes: 1024,
            ..Limits::default()
        };
        assert_eq!(ceiling.clamp(&LimitRequest::default()).memory_bytes, 1024);
    }
}
