//! A value remembered for a short while: what `/health` last heard from the executor.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The last value put, while it is younger than the window given at creation.
#[derive(Debug)]
pub struct Recent<T> {
    within: Duration,
    last: Mutex<Option<(Instant, T)>>,
}

impl<T: Clone> Recent<T> {
    pub const fn new(within: Duration) -> Self {
        Recent {
            within,
            last: Mutex::new(None),
        }
    }

    /// The last value, unless it is older than the window.
    pub fn get(&self) -> Option<T> {
        self.lock()
            .as_ref()
            .filter(|(at, _)| at.elapsed() < self.within)
            .map(|(_, value)| value.clone())
    }

    pub fn put(&self, value: T) {
        *self.lock() = Some((Instant::now(), value));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, T)>> {
        self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
