//! Arbitrary bytes through both sides' frame decoders (`ExecutorCodec` reads what a peer of
//! the privileged executor sends; `FrontendCodec` what the executor answers), the way a
//! connection does: decode frame after frame until the codec wants more bytes (`None`) or
//! refuses (an error ends the connection). The bytes arrive in two pieces, split where the
//! first input byte says, so partial frames are exercised too.
//!
//! What must hold: no panic, no abort, no allocation beyond libFuzzer's malloc limit (a
//! bincode length field must never be trusted beyond the frame), and every message that
//! decodes survives a round trip through the encoder.

#![no_main]

use std::fmt::Debug;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use nox_protocol::codec::{decode_payload, encode_payload};
use nox_protocol::{ExecutorCodec, FrontendCodec};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::Decoder;

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
                    let back: C::Item =
                        decode_payload(&payload).expect("a re-encoded message decodes");
                    assert_eq!(back, message, "round trip changed the message");
                }
                Ok(None) => break,
                // The connection would be dropped here: nothing more is read from it.
                Err(_) => return,
            }
        }
    }
    let _ = codec.decode_eof(&mut buffer);
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let split = usize::from(selector) * rest.len() / 255;
    drain(ExecutorCodec::new(), rest, split);
    drain(FrontendCodec::new(), rest, split);
    // The payload decoder alone, as if the whole input were one frame's payload.
    let _ = decode_payload::<nox_protocol::Request>(rest);
    let _ = decode_payload::<nox_protocol::Reply>(rest);
});
