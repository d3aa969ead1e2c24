//! The adversarial suite: a hostile user against the real daemons, started as the e2e
//! harness starts them. Each case asserts the safe outcome and that the service still
//! serves afterwards. `tests/ADVERSARIAL.md` lists the cases, what each sandbox layer
//! defends, and what nox does not defend against.
//!
//! Run it with `cargo test -p nox-e2e --test adversarial` (the binaries must be built:
//! `cargo build --workspace --bins`). Cases that need root say `SKIP` out loud when the
//! suite is not root, and fail instead under CI.

#[cfg(test)]
mod adversarial {
    mod common;
    mod containment;
    mod files;
    mod http;
    mod kernel;
    mod network;
    mod properties;
    mod protocol;
    mod secrets;
    mod side_channels;
    mod terminal;
}
