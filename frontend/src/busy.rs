//! The executor's last "busy" refusal of a job (its queue full), repeated by the frontend for
//! a short while so that a flood of jobs (clients that retry at once) is refused here, not
//! each with a round trip to the executor that the whole flood then waits on.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nox_protocol::WireError;

/// How long after the executor refused a job as busy the frontend refuses the next ones
/// itself, with the same answer, without asking it.
pub const BUSY_HINT: Duration = Duration::from_millis(2);

/// The last busy refusal and when it was last confirmed. Past the window one job asks the
/// executor and the window starts again: under a flood one job per window asks, not every
/// job that arrives before the executor's answer is back. Any job of this frontend that
/// ends (finished, failed, or its client gone, queued or running) frees a place and clears
/// the hint at once, so a place freed here is never refused.
#[derive(Debug)]
pub struct BusyHint {
    within: Duration,
    last: Mutex<Option<(Instant, WireError)>>,
}

impl BusyHint {
    pub const fn new(within: Duration) -> Self {
        BusyHint {
            within,
            last: Mutex::new(None),
        }
    }

    /// The refusal to repeat, or `None`: ask the executor.
    pub fn refusal(&self) -> Option<WireError> {
        let mut last = self.lock();
        let (at, wire) = last.as_mut()?;
        if at.elapsed() < self.within {
            return Some(wire.clone());
        }
        // This job asks; the others wait for its answer within a new window.
        *at = Instant::now();
        None
    }

    /// The executor refused a job as busy.
    pub fn put(&self, wire: WireError) {
        *self.lock() = Some((Instant::now(), wire));
    }

    /// A place was freed.
    pub fn clear(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> MutexGuard<'_, Option<(Instant, WireError)>> {
        self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A job between asking the executor and its first answer. Dropped before that (its
/// client went away, perhaps while the job was queued), it clears the hint: the executor
/// frees the job's place when it sees the connection close.
pub struct Asking<'a> {
    hint: Option<&'a BusyHint>,
}

impl<'a> Asking<'a> {
    pub fn new(hint: &'a BusyHint) -> Self {
        Asking { hint: Some(hint) }
    }

    /// The executor answered.
    pub fn answered(mut self) {
        self.hint = None;
    }
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        if let Some(hint) = self.hint {
            hint.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nox_protocol::ErrorKind;

    fn queue_full() -> WireError {
        WireError::new(ErrorKind::Busy, "queue full")
    }

    #[test]
    fn a_busy_refusal_is_repeated_only_within_the_hint() {
        let hint = BusyHint::new(BUSY_HINT);
        assert_eq!(hint.refusal(), None);
        hint.put(queue_full());
        assert_eq!(hint.refusal(), Some(queue_full()));
        // A job ended: its place is free, ask the executor again.
        hint.clear();
        assert_eq!(hint.refusal(), None);
        hint.put(queue_full());
        std::thread::sleep(BUSY_HINT + Duration::from_millis(3));
        assert_eq!(hint.refusal(), None, "repeated past {BUSY_HINT:?}");
    }

    #[test]
    fn past_the_window_one_job_asks_and_the_others_are_refused_meanwhile() {
        let hint = BusyHint::new(Duration::from_millis(20));
        hint.put(queue_full());
        std::thread::sleep(Duration::from_millis(25));
        assert_eq!(hint.refusal(), None, "the first job past the window asks");
        for _ in 0..10 {
            assert_eq!(hint.refusal(), Some(queue_full()), "the rest wait for it");
        }
        std::thread::sleep(Duration::from_millis(25));
        assert_eq!(
            hint.refusal(),
            None,
            "its answer lost, another job asks later"
        );
    }

    #[test]
    fn a_job_dropped_before_the_executor_answered_clears_the_hint() {
        let hint = BusyHint::new(Duration::from_secs(60));
        let asking = Asking::new(&hint);
        hint.put(queue_full());
        asking.answered();
        assert_eq!(hint.refusal(), Some(queue_full()), "an answer keeps it");
        drop(Asking::new(&hint));
        assert_eq!(
            hint.refusal(),
            None,
            "a job gone while queued freed a place"
        );
    }
}
