//! A 200 MiB upload (`PUT /files/<name>`), generated chunk by chunk as hyper asks for it
//! (never whole in memory), while both daemons' resident memory is sampled and their peak
//! (`VmHWM`, reset first through `/proc/<pid>/clear_refs`) read. The file is then
//! downloaded and compared byte for byte with what was sent, and deleted.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::{Body, Frame, SizeHint};

use crate::client::{self, Conn};
use crate::{Check, Failure, Nox, RssSampler, mib, reset_peak, status_kib};

const UPLOAD_BYTES: u64 = 200 * 1024 * 1024;
const CHUNK_BYTES: u64 = 256 * 1024;
const GROWTH_TARGET_KIB: u64 = 16 * 1024;
const PATH: &str = "bench/upload-200MiB.bin";

/// SplitMix64: the content is a pure function of the offset, so the download can be
/// checked without keeping anything.
fn word(index: u64) -> [u8; 8] {
    let mut z = index.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)).to_le_bytes()
}

/// The content from `offset`, `out.len()` bytes.
fn fill(offset: u64, out: &mut [u8]) {
    let mut position = offset;
    let mut done = 0;
    while done < out.len() {
        let bytes = word(position / 8);
        let start = (position % 8) as usize;
        let take = (8 - start).min(out.len() - done);
        out[done..done + take].copy_from_slice(&bytes[start..start + take]);
        done += take;
        position += take as u64;
    }
}

/// The upload's body: the next chunk is made only when hyper asks for it.
struct Generated {
    sent: u64,
}

impl Body for Generated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let left = UPLOAD_BYTES - this.sent;
        if left == 0 {
            return Poll::Ready(None);
        }
        let length = left.min(CHUNK_BYTES);
        let mut chunk = vec![0u8; length as usize];
        fill(this.sent, &mut chunk);
        this.sent += length;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent == UPLOAD_BYTES
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(UPLOAD_BYTES - self.sent)
    }
}

/// Download the file and compare it with the content sent: (bytes, identical).
async fn verify(nox: &Nox) -> Result<(u64, bool), Failure> {
    let mut conn: Conn<Full<Bytes>> = client::connect(nox.port).await?;
    conn.sender.ready().await?;
    let response = conn
        .sender
        .send_request(client::authorized(
            nox.port,
            &nox.token,
            "GET",
            &format!("/files/{PATH}"),
        )?)
        .await?;
    if !response.status().is_success() {
        return Err(format!("GET /files/{PATH} answered {}", response.status()).into());
    }
    let mut body = response.into_body();
    let (mut received, mut identical) = (0u64, true);
    let mut expected = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        expected.resize(data.len(), 0);
        fill(received, &mut expected);
        identical &= expected[..] == data[..];
        received += data.len() as u64;
    }
    Ok((received, identical && received == UPLOAD_BYTES))
}

/// Upload, measure, check, delete.
pub(crate) async fn measure(nox: &Nox) -> Result<Vec<Check>, Failure> {
    let pids = nox.pids();
    let before = pids.map(|pid| status_kib(pid, "VmRSS:"));
    let peak_reset = pids.map(reset_peak);
    let rss = RssSampler::start(pids);
    let begun = Instant::now();
    let mut conn: Conn<Generated> = client::connect(nox.port).await?;
    let request = Request::builder()
        .method("PUT")
        .uri(format!("/files/{PATH}"))
        .header("host", format!("127.0.0.1:{}", nox.port))
        .header("authorization", format!("Bearer {}", nox.token))
        .header("content-type", "application/octet-stream")
        .header("content-length", UPLOAD_BYTES.to_string())
        .body(Generated { sent: 0 })?;
    conn.sender.ready().await?;
    let response =
        tokio::time::timeout(Duration::from_secs(120), conn.sender.send_request(request))
            .await
            .map_err(|_| "the upload took more than 120 s")??;
    let status = response.status();
    let reply: serde_json::Value =
        serde_json::from_slice(&response.into_body().collect().await?.to_bytes())
            .unwrap_or_default();
    let took = begun.elapsed();
    let sampled = rss.finish().await;
    drop(conn);
    let mut peak = sampled;
    for (slot, (pid, reset)) in peak.iter_mut().zip(pids.into_iter().zip(peak_reset)) {
        if reset {
            *slot = (*slot).max(status_kib(pid, "VmHWM:"));
        }
    }
    let grown = [
        peak[0].saturating_sub(before[0]),
        peak[1].saturating_sub(before[1]),
    ];
    let saved = status.is_success() && reply["bytes"] == UPLOAD_BYTES;
    let (received, identical) = if saved {
        verify(nox).await?
    } else {
        (0, false)
    };
    let deleted = client::once(
        nox.port,
        client::authorized(nox.port, &nox.token, "DELETE", &format!("/files/{PATH}"))?,
        Duration::from_secs(10),
    )
    .await
    .is_ok_and(|reply| reply.status.is_success());

    let how = if peak_reset.iter().all(|r| *r) {
        "peak = VmHWM since a reset before the upload"
    } else {
        "peak = most VmRSS seen, sampled every 10 ms"
    };
    let rate = UPLOAD_BYTES as f64 / 1_048_576.0 / took.as_secs_f64();
    Ok(vec![
        Check::new(
            "upload 200 MiB (`PUT /files/…`, streamed): nox-frontend memory".to_owned(),
            format!(
                "{:.1} → peak {:.1} MiB: +{:.1} MiB ({how}); {status} in {:.2} s, {rate:.0} MiB/s",
                mib(before[0]),
                mib(peak[0]),
                mib(grown[0]),
                took.as_secs_f64()
            ),
            format!("grows ≤ {} MiB", GROWTH_TARGET_KIB / 1024),
            saved && grown[0] <= GROWTH_TARGET_KIB,
        ),
        Check::new(
            "upload 200 MiB: nox-executor memory".to_owned(),
            format!(
                "{:.1} → peak {:.1} MiB: +{:.1} MiB",
                mib(before[1]),
                mib(peak[1]),
                mib(grown[1])
            ),
            format!("grows ≤ {} MiB", GROWTH_TARGET_KIB / 1024),
            saved && grown[1] <= GROWTH_TARGET_KIB,
        ),
        Check::new(
            "upload 200 MiB: the file arrives whole".to_owned(),
            format!(
                "reply {}, `bytes` {}; downloaded {received} bytes, {}; {}",
                status.as_u16(),
                reply["bytes"],
                if identical {
                    "identical to what was sent"
                } else {
                    "NOT identical"
                },
                if deleted {
                    "deleted after"
                } else {
                    "NOT deleted"
                }
            ),
            format!("{UPLOAD_BYTES} bytes, same content"),
            saved && identical && deleted,
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_content_depends_only_on_the_offset() {
        let mut whole = [0u8; 64];
        fill(3, &mut whole);
        let (mut head, mut tail) = ([0u8; 13], [0u8; 51]);
        fill(3, &mut head);
        fill(16, &mut tail);
        assert_eq!(whole[..13], head);
        assert_eq!(whole[13..], tail);
        assert_ne!(whole[..8], whole[8..16]);
    }
}
