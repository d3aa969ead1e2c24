//! Framing: `LengthDelimitedCodec` with an explicit maximum, and bincode with the same
//! maximum. Every bincode call of the workspace is in this module.
//!
//! Without a limit, bincode trusts a length field: a 9-byte frame that claims a 2^40-byte
//! string makes it try to allocate a terabyte and abort the process. Here the frame length
//! is checked before anything is buffered, and bincode decodes from the frame's slice with
//! a byte limit, so no field can claim more than the frame holds.

use std::io;
use std::marker::PhantomData;

use bincode::Options;
use bytes::{Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;
use tokio_util::codec::length_delimited::LengthDelimitedCodecError;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::MAX_FRAME_LEN;
use crate::message::{Reply, Request};

/// Why a frame could not be read or written. Any of these ends the connection.
#[derive(Debug, Error)]
pub enum CodecError {
    #[error("frame is larger than {MAX_FRAME_LEN} bytes")]
    FrameTooLarge,
    #[error("could not encode a message")]
    Encode(#[source] bincode::Error),
    #[error("could not decode a frame")]
    Decode(#[source] bincode::Error),
    #[error("connection failed")]
    Io(#[source] io::Error),
}

impl From<io::Error> for CodecError {
    fn from(error: io::Error) -> Self {
        let too_large = error
            .get_ref()
            .is_some_and(|inner| inner.is::<LengthDelimitedCodecError>());
        if too_large {
            CodecError::FrameTooLarge
        } else {
            CodecError::Io(error)
        }
    }
}

/// bincode 1.3.3, fixint encoding, trailing bytes rejected, every length bounded.
fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .reject_trailing_bytes()
        .with_limit(MAX_FRAME_LEN as u64)
}

/// Serialise one message into a payload (no length prefix).
pub fn encode_payload<T: Serialize>(message: &T) -> Result<Vec<u8>, CodecError> {
    options().serialize(message).map_err(CodecError::Encode)
}

/// Deserialise one payload (no length prefix).
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
    options().deserialize(payload).map_err(CodecError::Decode)
}

/// The length-prefix codec both sides use.
pub fn length_codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_type::<u32>()
        .big_endian()
        .max_frame_length(MAX_FRAME_LEN)
        .new_codec()
}

/// A typed codec: encodes `Out`, decodes `In`.
#[derive(Debug)]
pub struct FrameCodec<Out, In> {
    frames: LengthDelimitedCodec,
    _types: PhantomData<fn(Out) -> In>,
}

impl<Out, In> Default for FrameCodec<Out, In> {
    fn default() -> Self {
        FrameCodec {
            frames: length_codec(),
            _types: PhantomData,
        }
    }
}

impl<Out, In> FrameCodec<Out, In> {
    /// A codec with the protocol's frame limit.
    pub fn new() -> Self {
        Self::default()
    }
}

/// The frontend's side: sends requests, reads replies.
pub type FrontendCodec = FrameCodec<Request, Reply>;
/// The executor's side: sends replies, reads requests.
pub type ExecutorCodec = FrameCodec<Reply, Request>;

impl<Out: Serialize, In> Encoder<Out> for FrameCodec<Out, In> {
    type Error = CodecError;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), CodecError> {
        let payload = encode_payload(&item)?;
        self.frames.encode(Bytes::from(payload), dst)?;
        Ok(())
    }
}

impl<Out, In: DeserializeOwned> Decoder for FrameCodec<Out, In> {
    type Item = In;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, CodecError> {
        match self.frames.decode(src)? {
            Some(frame) => decode_payload(&frame).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{SinkExt, StreamExt};
    use proptest::prelude::*;
    use tokio::io::AsyncWriteExt;
    use tokio_util::codec::{FramedRead, FramedWrite};

    use super::*;
    use crate::limits::{LimitRequest, Limits};
    use crate::message::*;

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) {
        let bytes = encode_payload(value).unwrap();
        let back: T = decode_payload(&bytes).unwrap();
        assert_eq!(&back, value);
    }

    fn decode_request(bytes: &[u8]) -> Result<Option<Request>, CodecError> {
        let mut codec = ExecutorCodec::new();
        let mut buffer = BytesMut::from(bytes);
        codec.decode(&mut buffer)
    }

    #[test]
    fn the_bytes_of_a_hello_are_pinned() {
        // Changing these bytes changes the wire format: bump PROTOCOL_VERSION with it.
        let hello = Request::Hello(Hello {
            version: 1,
            software: "x".into(),
        });
        let mut frame = BytesMut::new();
        FrontendCodec::new().encode(hello, &mut frame).unwrap();
        assert_eq!(
            frame.as_ref(),
            &[
                0, 0, 0, 17, // length prefix, big endian
                0, 0, 0, 0, // variant 0: Hello
                1, 0, 0, 0, // version: u32 = 1
                1, 0, 0, 0, 0, 0, 0, 0, // string length: u64 = 1
                b'x',
            ]
        );
    }

    #[test]
    fn a_length_prefix_above_the_maximum_is_refused_before_buffering() {
        let mut bytes = ((MAX_FRAME_LEN as u32) + 1).to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0; 16]);
        assert!(matches!(
            decode_request(&bytes),
            Err(CodecError::FrameTooLarge)
        ));
    }

    #[test]
    fn a_nine_byte_frame_claiming_a_huge_string_is_refused_without_allocating() {
        // Variant 0 (Hello), version, then a string length of 2^40 and no data: without a
        // limit bincode would allocate a terabyte and abort the process.
        let mut payload = vec![0, 0, 0, 0, 1, 0, 0, 0];
        payload.extend_from_slice(&(1u64 << 40).to_le_bytes());
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&payload);
        assert!(matches!(decode_request(&frame), Err(CodecError::Decode(_))));

        // The same with a nine-byte payload for a byte vector (PutChunk, variant 4).
        let mut payload = vec![4, 0, 0, 0];
        payload.extend_from_slice(&(1u64 << 40).to_le_bytes()[..5]);
        assert_eq!(payload.len(), 9);
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&payload);
        assert!(matches!(decode_request(&frame), Err(CodecError::Decode(_))));
    }

    #[test]
    fn truncated_frames_wait_for_more_and_garbage_is_refused() {
        let mut full = BytesMut::new();
        FrontendCodec::new()
            .encode(Request::Status, &mut full)
            .unwrap();
        for cut in 0..full.len() {
            assert!(
                decode_request(&full[..cut]).unwrap().is_none(),
                "cut at {cut}"
            );
        }
        // An unknown variant, a valid variant followed by trailing bytes, random bytes.
        assert!(decode_request(&[0, 0, 0, 4, 99, 0, 0, 0]).is_err());
        assert!(decode_request(&[0, 0, 0, 5, 2, 0, 0, 0, 7]).is_err());
        assert!(decode_request(&[0, 0, 0, 3, 0xff, 0xfe, 0xfd]).is_err());
    }

    #[tokio::test]
    async fn frames_arriving_in_fragments_are_reassembled() {
        let (client, server) = tokio::io::duplex(64);
        let message = Request::Run(sample_job());
        let mut encoded = BytesMut::new();
        FrontendCodec::new()
            .encode(message.clone(), &mut encoded)
            .unwrap();
        let writer = tokio::spawn(async move {
            let mut client = client;
            for piece in encoded.chunks(3) {
                client.write_all(piece).await.unwrap();
            }
            client
        });
        let mut reader = FramedRead::new(server, ExecutorCodec::new());
        assert_eq!(reader.next().await.unwrap().unwrap(), message);
        drop(writer.await.unwrap());
        assert!(reader.next().await.is_none());
    }

    #[tokio::test]
    async fn an_oversized_frame_ends_the_stream_with_an_error() {
        let (client, server) = tokio::io::duplex(1024);
        let mut writer = FramedWrite::new(client, tokio_util::codec::BytesCodec::new());
        let mut bytes = BytesMut::new();
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        writer.send(bytes).await.unwrap();
        let mut reader = FramedRead::new(server, ExecutorCodec::new());
        assert!(matches!(
            reader.next().await,
            Some(Err(CodecError::FrameTooLarge))
        ));
    }

    fn sample_job() -> JobSpec {
        JobSpec {
            job_id: "abc".into(),
            workspace: "default".into(),
            program: Program::Python {
                code: "print(1)\n".into(),
                filename: "run.py".into(),
            },
            stdin: b"input".to_vec(),
            limits: LimitRequest {
                timeout_ms: Some(5),
                ..LimitRequest::default()
            },
        }
    }

    fn arb_bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..64)
    }

    fn arb_limits() -> impl Strategy<Value = Limits> {
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(|(a, b, c, d, e, f, g)| Limits {
                timeout_ms: a,
                cpu_seconds: b,
                memory_bytes: c,
                max_processes: d,
                max_file_bytes: e,
                max_open_files: f,
                max_output_bytes: g,
            })
    }

    fn arb_limit_request() -> impl Strategy<Value = LimitRequest> {
        (
            any::<Option<u64>>(),
            any::<Option<u64>>(),
            any::<Option<u64>>(),
            any::<Option<u64>>(),
            any::<Option<u64>>(),
            any::<Option<u64>>(),
            any::<Option<u64>>(),
        )
            .prop_map(|(a, b, c, d, e, f, g)| LimitRequest {
                timeout_ms: a,
                cpu_seconds: b,
                memory_bytes: c,
                max_processes: d,
                max_file_bytes: e,
                max_open_files: f,
                max_output_bytes: g,
            })
    }

    fn arb_program() -> impl Strategy<Value = Program> {
        prop_oneof![
            (any::<String>(), any::<String>())
                .prop_map(|(code, filename)| Program::Python { code, filename }),
            any::<String>().prop_map(|command| Program::Shell { command }),
        ]
    }

    fn arb_request() -> impl Strategy<Value = Request> {
        prop_oneof![
            (any::<u32>(), any::<String>())
                .prop_map(|(version, software)| Request::Hello(Hello { version, software })),
            (
                any::<String>(),
                any::<String>(),
                arb_program(),
                arb_bytes(),
                arb_limit_request()
            )
                .prop_map(|(job_id, workspace, program, stdin, limits)| {
                    Request::Run(JobSpec {
                        job_id,
                        workspace,
                        program,
                        stdin,
                        limits,
                    })
                }),
            Just(Request::Status),
            (any::<String>(), any::<String>())
                .prop_map(|(workspace, path)| Request::PutStart(PutStart { workspace, path })),
            arb_bytes().prop_map(Request::PutChunk),
            Just(Request::PutEnd),
            (any::<String>(), any::<String>())
                .prop_map(|(workspace, path)| Request::Get(FileRef { workspace, path })),
            (any::<String>(), any::<String>())
                .prop_map(|(workspace, prefix)| Request::List(ListRequest { workspace, prefix })),
            (any::<String>(), any::<String>())
                .prop_map(|(workspace, path)| Request::Delete(FileRef { workspace, path })),
            Just(Request::Cancel),
        ]
    }

    fn arb_layer() -> impl Strategy<Value = Layer> {
        proptest::sample::select(Layer::ALL.to_vec())
    }

    fn arb_error_kind() -> impl Strategy<Value = ErrorKind> {
        proptest::sample::select(vec![
            ErrorKind::BadRequest,
            ErrorKind::InvalidPath,
            ErrorKind::NotFound,
            ErrorKind::Conflict,
            ErrorKind::TooLarge,
            ErrorKind::Busy,
            ErrorKind::SandboxUnavailable,
            ErrorKind::ProtocolMismatch,
            ErrorKind::Internal,
            ErrorKind::QuotaExceeded,
        ])
    }

    fn arb_outcome() -> impl Strategy<Value = JobOutcome> {
        (
            any::<String>(),
            prop_oneof![
                any::<i32>().prop_map(ExitStatus::Exited),
                any::<i32>().prop_map(ExitStatus::Signaled)
            ],
            any::<bool>(),
            proptest::option::of(proptest::sample::select(vec![
                LimitHit::Timeout,
                LimitHit::Output,
                LimitHit::Cpu,
                LimitHit::FileSize,
                LimitHit::Disk,
            ])),
            any::<u64>(),
            (any::<u64>(), any::<u64>(), any::<u64>()),
            (any::<u64>(), any::<u64>(), any::<bool>(), any::<bool>()),
        )
            .prop_map(
                |(job_id, status, timed_out, limit_hit, duration_ms, usage, output)| JobOutcome {
                    job_id,
                    status,
                    timed_out,
                    limit_hit,
                    duration_ms,
                    usage: ResourceUsage {
                        user_ms: usage.0,
                        system_ms: usage.1,
                        max_rss_kib: usage.2,
                    },
                    stdout_bytes: output.0,
                    stderr_bytes: output.1,
                    stdout_truncated: output.2,
                    stderr_truncated: output.3,
                },
            )
    }

    fn arb_reply() -> impl Strategy<Value = Reply> {
        let entry = (
            any::<String>(),
            proptest::sample::select(vec![
                EntryKind::File,
                EntryKind::Dir,
                EntryKind::Symlink,
                EntryKind::Other,
            ]),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(|(path, kind, size, modified_ms)| FileEntry {
                path,
                kind,
                size,
                modified_ms,
            });
        let layer = (arb_layer(), any::<bool>(), any::<bool>(), any::<String>()).prop_map(
            |(layer, active, required, detail)| LayerStatus {
                layer,
                active,
                required,
                detail,
            },
        );
        prop_oneof![
            (any::<u32>(), any::<String>())
                .prop_map(|(version, software)| Reply::Hello(Hello { version, software })),
            (any::<String>(), any::<u64>(), arb_limits()).prop_map(
                |(job_id, queued_ms, limits)| {
                    Reply::Started(JobStarted {
                        job_id,
                        queued_ms,
                        limits,
                    })
                }
            ),
            (any::<bool>(), arb_bytes()).prop_map(|(err, data)| Reply::Output(OutputChunk {
                stream: if err { Stream::Stderr } else { Stream::Stdout },
                data
            })),
            arb_outcome().prop_map(Reply::Finished),
            (
                any::<String>(),
                any::<u64>(),
                any::<bool>(),
                proptest::collection::vec(layer, 0..4),
                (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()),
                arb_limits()
            )
                .prop_map(|(software, uptime_ms, ready, layers, jobs, ceilings)| {
                    Reply::Status(ExecutorStatus {
                        software,
                        uptime_ms,
                        ready,
                        layers,
                        jobs_running: jobs.0,
                        jobs_queued: jobs.1,
                        max_concurrent_jobs: jobs.2,
                        max_queued_jobs: jobs.3,
                        ceilings,
                    })
                }),
            (any::<String>(), any::<u64>())
                .prop_map(|(path, bytes)| Reply::Saved(Saved { path, bytes })),
            (any::<String>(), any::<u64>())
                .prop_map(|(path, size)| Reply::FileStart(FileMeta { path, size })),
            arb_bytes().prop_map(Reply::FileChunk),
            Just(Reply::FileEnd),
            (proptest::collection::vec(entry, 0..4), any::<bool>())
                .prop_map(|(entries, truncated)| Reply::Listing(Listing { entries, truncated })),
            (any::<String>(), any::<String>())
                .prop_map(|(workspace, path)| Reply::Deleted(FileRef { workspace, path })),
            (
                arb_error_kind(),
                proptest::collection::vec(any::<String>(), 0..3)
            )
                .prop_map(|(kind, chain)| Reply::Error(WireError { kind, chain })),
        ]
    }

    proptest! {
        #[test]
        fn every_request_survives_a_round_trip(request in arb_request()) {
            round_trip(&request);
        }

        #[test]
        fn every_reply_survives_a_round_trip(reply in arb_reply()) {
            round_trip(&reply);
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_request(&bytes);
            let _ = decode_payload::<Request>(&bytes);
            let _ = decode_payload::<Reply>(&bytes);
        }
    }
}
