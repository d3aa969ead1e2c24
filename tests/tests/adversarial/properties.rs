//! The bounded, CI-sized twin of the cargo-fuzz targets in `fuzz/` (`frame_decoder`,
//! `request_paths`, `limits`): the same properties, 10,000 generated cases each, under
//! `cargo test`. (The frontend's percent-decoder, `nox_frontend::uri`, is fuzzed in `fuzz/`
//! only: this crate does not depend on the frontend library.)

use std::fmt::Debug;

use bytes::BytesMut;
use nox_protocol::codec::{decode_payload, encode_payload};
use nox_protocol::path::{MAX_COMPONENT_LEN, MAX_PATH_LEN};
use nox_protocol::{
    ExecutorCodec, FileRef, FrontendCodec, Hello, JobSpec, LimitRequest, Limits, ListRequest,
    OutputChunk, Program, PutStart, RelPath, Reply, Request, Stream,
};
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::{Decoder, Encoder};

/// One valid frame of each request and reply shape: the seeds the mutations start from.
fn valid_frames() -> Vec<Vec<u8>> {
    let requests = vec![
        Request::Hello(Hello::new("nox-frontend")),
        Request::Status,
        Request::Run(JobSpec {
            job_id: "abc".into(),
            workspace: "default".into(),
            program: Program::Shell {
                command: "echo hi".into(),
            },
            stdin: b"in".to_vec(),
            limits: LimitRequest {
                timeout_ms: Some(5),
                ..LimitRequest::default()
            },
        }),
        Request::Run(JobSpec {
            job_id: "py".into(),
            workspace: "w".into(),
            program: Program::Python {
                code: "print(1)".into(),
                filename: "run.py".into(),
            },
            stdin: Vec::new(),
            limits: LimitRequest::default(),
        }),
        Request::PutStart(PutStart {
            workspace: "default".into(),
            path: "a/b.txt".into(),
        }),
        Request::PutChunk(b"data".to_vec()),
        Request::PutEnd,
        Request::Get(FileRef {
            workspace: "default".into(),
            path: "x".into(),
        }),
        Request::List(ListRequest {
            workspace: "default".into(),
            prefix: String::new(),
        }),
        Request::Cancel,
    ];
    let replies = vec![
        Reply::Hello(Hello::new("nox-executor")),
        Reply::Output(OutputChunk {
            stream: Stream::Stderr,
            data: b"out".to_vec(),
        }),
        Reply::FileChunk(b"chunk".to_vec()),
        Reply::FileEnd,
    ];
    let mut frames = Vec::new();
    for request in requests {
        let mut buffer = BytesMut::new();
        FrontendCodec::new()
            .encode(request, &mut buffer)
            .expect("encode a request");
        frames.push(buffer.to_vec());
    }
    for reply in replies {
        let mut buffer = BytesMut::new();
        ExecutorCodec::new()
            .encode(reply, &mut buffer)
            .expect("encode a reply");
        frames.push(buffer.to_vec());
    }
    frames
}

/// Decodes frame after frame from `data` arriving in two pieces, as a connection does, until
/// the codec wants more or refuses; every message decoded must survive a round trip.
fn drain<C>(mut codec: C, data: &[u8], split: usize)
where
    C: Decoder,
    C::Item: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let (first, second) = data.split_at(split.min(data.len()));
    let mut buffer = BytesMut::new();
    for piece in [first, second] {
        buffer.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buffer) {
                Ok(Some(message)) => {
                    let payload = encode_payload(&message).expect("a decoded message re-encodes");
                    let back: C::Item = decode_payload(&payload).expect("and decodes again");
                    assert_eq!(back, message);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

/// Bytes to feed the decoders: random, or valid frames cut, flipped, spliced and repeated.
fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    let frames = valid_frames();
    let mutated = (
        proptest::sample::select(frames.clone()),
        proptest::sample::select(frames),
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        any::<prop::sample::Index>(),
        0usize..3,
    )
        .prop_map(|(first, second, flips, cut, repeat)| {
            let mut bytes = first.repeat(repeat + 1);
            for (index, byte) in flips {
                let at = index.index(bytes.len());
                bytes[at] = byte;
            }
            bytes.truncate(cut.index(bytes.len() + 1));
            bytes.extend_from_slice(&second);
            bytes
        });
    prop_oneof![proptest::collection::vec(any::<u8>(), 0..512), mutated,]
}

/// Path-like strings: the pieces traversal is made of, joined at random.
fn path_like() -> impl Strategy<Value = String> {
    let pieces = proptest::sample::select(vec![
        "..", ".", "/", "//", "a", "b.txt", "%2e", "%2f", "\\", "\0", "\n", "\u{7f}", "\u{e9}",
        "\u{2026}", " ", "...", "..a", "~", "\u{ff0e}",
    ]);
    prop_oneof![
        proptest::collection::vec(pieces, 0..12).prop_map(|pieces| pieces.concat()),
        any::<String>(),
        "[a/.]{0,40}",
    ]
}

fn check_accepted(path: &RelPath) {
    let text = path.as_str();
    assert!(!text.is_empty() && !text.starts_with('/'), "{text:?}");
    assert!(text.len() <= MAX_PATH_LEN, "{text:?}");
    assert!(
        !text.contains('\\') && !text.chars().any(char::is_control),
        "{text:?}"
    );
    for component in path.components() {
        assert!(!matches!(component, "" | "." | ".."), "{text:?}");
        assert!(component.len() <= MAX_COMPONENT_LEN, "{text:?}");
    }
    assert_eq!(RelPath::parse(text).as_ref(), Ok(path), "not a fixed point");
}

fn limits_of(values: [u64; 7]) -> Limits {
    Limits {
        timeout_ms: values[0],
        cpu_seconds: values[1],
        memory_bytes: values[2],
        max_processes: values[3],
        max_file_bytes: values[4],
        max_open_files: values[5],
        max_output_bytes: values[6],
    }
}

fn fields(limits: &Limits) -> [u64; 7] {
    [
        limits.timeout_ms,
        limits.cpu_seconds,
        limits.memory_bytes,
        limits.max_processes,
        limits.max_file_bytes,
        limits.max_open_files,
        limits.max_output_bytes,
    ]
}

/// Floors from `Limits::clamp`.
const FLOORS: [u64; 7] = [1, 1, 32 * 1024 * 1024, 1, 0, 16, 0];

fn edgy_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        Just(0u64),
        Just(u64::MAX),
        proptest::sample::select(FLOORS.to_vec()),
        proptest::sample::select(FLOORS.to_vec()).prop_map(|floor| floor.saturating_sub(1)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn the_frame_decoders_never_panic_and_what_they_decode_round_trips(
        bytes in hostile_bytes(),
        split in any::<prop::sample::Index>(),
    ) {
        let split = split.index(bytes.len() + 1);
        drain(ExecutorCodec::new(), &bytes, split);
        drain(FrontendCodec::new(), &bytes, split);
        let _ = decode_payload::<Request>(&bytes);
        let _ = decode_payload::<Reply>(&bytes);
    }

    #[test]
    fn relpath_never_accepts_a_path_that_leaves_the_workspace(raw in path_like()) {
        let parsed = RelPath::parse(&raw);
        if let Ok(path) = &parsed {
            check_accepted(path);
        }
        if raw.split('/').any(|component| component == "..") || raw.starts_with('/') {
            prop_assert!(parsed.is_err(), "{:?} was accepted", raw);
        }
        match RelPath::parse_prefix(&raw) {
            Ok(Some(path)) => check_accepted(&path),
            Ok(None) => prop_assert_eq!(parsed, Err(nox_protocol::PathError::Empty)),
            Err(error) => prop_assert_eq!(parsed, Err(error)),
        }
    }

    #[test]
    fn clamped_limits_never_exceed_the_ceilings(
        ceiling in proptest::array::uniform7(edgy_u64()),
        asked in proptest::array::uniform7(proptest::option::of(edgy_u64())),
    ) {
        let limits = limits_of(ceiling);
        let request = LimitRequest {
            timeout_ms: asked[0],
            cpu_seconds: asked[1],
            memory_bytes: asked[2],
            max_processes: asked[3],
            max_file_bytes: asked[4],
            max_open_files: asked[5],
            max_output_bytes: asked[6],
        };
        let got = fields(&limits.clamp(&request));
        for index in 0..7 {
            prop_assert!(got[index] <= ceiling[index], "field {} above its ceiling", index);
            prop_assert!(got[index] >= FLOORS[index].min(ceiling[index]), "field {} below its floor", index);
            match asked[index] {
                None => prop_assert_eq!(got[index], ceiling[index]),
                Some(wanted) if wanted <= ceiling[index] && wanted >= FLOORS[index] => {
                    prop_assert_eq!(got[index], wanted);
                }
                Some(_) => {}
            }
        }
    }
}
