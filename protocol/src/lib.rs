//! The wire between `nox-frontend` and `nox-executor`.
//!
//! This crate is pure: types, the framing codec, path and name validation shared by both
//! sides, and the layered configuration loader. It opens no sockets and holds no policy
//! beyond "what is a well-formed message".
//!
//! # Frames
//!
//! Every message travels in one frame: a 4-byte big-endian length, then a bincode payload
//! (bincode 1.3.3, fixint encoding, trailing bytes rejected).
//!
//! ```text
//! +-------------+------------------------------------------+
//! | len: u32 BE |  bincode(Request) or bincode(Reply)      |
//! +-------------+------------------------------------------+
//!   len <= MAX_FRAME_LEN, checked before anything is buffered;
//!   the same bound is given to bincode so no field can claim more.
//! ```
//!
//! # Conversation
//!
//! ```text
//! frontend                                   executor
//!    | -- Hello { version } ------------------> |   first frame, always
//!    | <-------------------- Hello { version } - |   or Error(ProtocolMismatch), then close
//!    | -- Run(JobSpec) -----------------------> |
//!    | <------------------- Started { job_id } - |
//!    | <------------- Output { stream, data } -- |   zero or more, as the job writes
//!    | <------------------ Finished(outcome) --- |   user code failing is an outcome
//!    | -- PutStart, PutChunk.., PutEnd -------> |
//!    | <------------------------- Saved -------- |
//!    | -- Get --------------------------------> |
//!    | <------- FileStart, FileChunk.., FileEnd  |
//!    | -- List / Delete / Status -------------> |
//!    | <------ Listing / Deleted / Status ------ |
//! ```
//!
//! A connection carries any number of requests, one after the other. Any request may be
//! answered by `Error(WireError)` instead, which ends that request (not the connection).
//! A malformed, oversized or unexpected frame ends the connection, and nothing else.

#![forbid(unsafe_code)]

pub mod codec;
pub mod config;
pub mod limits;
pub mod message;
pub mod path;

pub use codec::{CodecError, ExecutorCodec, FrontendCodec};
pub use limits::{LimitRequest, Limits};
pub use message::*;
pub use path::{PathError, RelPath, validate_job_id, validate_workspace_name};

/// Version of the conversation above; both sides must agree exactly.
pub const PROTOCOL_VERSION: u32 = 2;

/// Largest frame either side accepts, payload only (the 4-byte prefix excluded).
pub const MAX_FRAME_LEN: usize = 4 * 1024 * 1024;

/// Largest data carried by one `Output`, `PutChunk` or `FileChunk` frame.
pub const MAX_CHUNK_LEN: usize = 256 * 1024;

/// Largest code plus stdin accepted in one `Run` request (leaves room for the rest of the
/// frame under [`MAX_FRAME_LEN`]).
pub const MAX_JOB_INPUT_LEN: usize = 3 * 1024 * 1024;

/// Most entries one `Listing` carries; more are reported as `truncated`.
pub const MAX_LISTING_ENTRIES: usize = 10_000;
