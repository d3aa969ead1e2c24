//! A progress bar on standard error for transfers of at least 1 MiB, drawn only when
//! standard error is a terminal (never into a pipe or a log).

use std::io::{IsTerminal, Read, Write};
use std::time::{Duration, Instant};

/// Smaller transfers draw nothing.
pub const MIN_BYTES: u64 = 1024 * 1024;
const WIDTH: usize = 30;
const REDRAW: Duration = Duration::from_millis(100);

/// One transfer's bar.
#[derive(Debug)]
pub struct Progress {
    label: String,
    total: u64,
    done: u64,
    last_draw: Option<Instant>,
    enabled: bool,
}

impl Progress {
    /// A bar for `total` bytes, drawn if that is known, at least [`MIN_BYTES`], and standard
    /// error is a terminal.
    pub fn new(label: &str, total: Option<u64>) -> Progress {
        let total = total.unwrap_or(0);
        Progress {
            label: label.to_owned(),
            total,
            done: 0,
            last_draw: None,
            enabled: total >= MIN_BYTES && std::io::stderr().is_terminal(),
        }
    }

    pub fn advance(&mut self, bytes: u64) {
        self.done = self.done.saturating_add(bytes);
        if self.enabled && self.last_draw.is_none_or(|at| at.elapsed() >= REDRAW) {
            self.draw();
        }
    }

    /// Draw the final state and end the line.
    pub fn finish(&mut self) {
        if self.enabled {
            self.draw();
            let _ = writeln!(std::io::stderr());
            self.enabled = false;
        }
    }

    fn draw(&mut self) {
        self.last_draw = Some(Instant::now());
        let mut stderr = std::io::stderr().lock();
        let _ = write!(stderr, "\r{} {}", self.label, bar(self.done, self.total));
        let _ = stderr.flush();
    }
}

/// `[#########.....................]  30%  3.0/10.0 MiB`
pub fn bar(done: u64, total: u64) -> String {
    let fraction = if total == 0 {
        1.0
    } else {
        (done as f64 / total as f64).clamp(0.0, 1.0)
    };
    let filled = ((fraction * WIDTH as f64).round() as usize).min(WIDTH);
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    format!(
        "[{}{}] {:>3}%  {:.1}/{:.1} MiB",
        "#".repeat(filled),
        ".".repeat(WIDTH - filled),
        (fraction * 100.0).round() as u32,
        mib(done),
        mib(total)
    )
}

/// A reader that advances a bar as it is read.
#[derive(Debug)]
pub struct ProgressReader<R> {
    inner: R,
    progress: Progress,
}

impl<R: Read> ProgressReader<R> {
    pub fn new(inner: R, progress: Progress) -> Self {
        ProgressReader { inner, progress }
    }
}

impl<R: Read> Read for ProgressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf)?;
        if read == 0 {
            self.progress.finish();
        } else {
            self.progress.advance(read as u64);
        }
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_in_proportion_and_says_how_much() {
        assert_eq!(
            bar(3 * MIN_BYTES, 10 * MIN_BYTES),
            "[#########.....................]  30%  3.0/10.0 MiB"
        );
        assert!(bar(0, 0).contains("100%"));
        assert!(bar(20, 10).starts_with(&format!("[{}]", "#".repeat(WIDTH))));
    }

    #[test]
    fn small_transfers_and_unknown_sizes_draw_nothing() {
        assert!(!Progress::new("x", Some(MIN_BYTES - 1)).enabled);
        assert!(!Progress::new("x", None).enabled);
    }

    #[test]
    fn the_reader_passes_the_bytes_through() {
        let mut reader = ProgressReader::new(&b"hello"[..], Progress::new("x", Some(5)));
        let mut out = String::new();
        reader.read_to_string(&mut out).unwrap();
        assert_eq!(out, "hello");
        assert_eq!(reader.progress.done, 5);
    }
}
