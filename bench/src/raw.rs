//! The load generator of the throughput cells: HTTP/1.1 on one kept-alive TCP connection,
//! written and parsed by hand, as wrk does, so that on a 2-core machine the client takes
//! as little CPU from nox as it can (hyper's client, with its connection task beside the
//! requests, reached 29k req/s on `/health` at c=32 where wrk reached 37k-41k). Every reply
//! is still read whole, its status taken and its body returned for checking.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Failure;

/// One response: its status, its `Retry-After` in seconds (when it has a number there) and
/// its body.
pub(crate) struct RawReply {
    pub(crate) status: u16,
    pub(crate) retry_after: Option<u64>,
    pub(crate) body: Vec<u8>,
}

/// One connection to 127.0.0.1.
pub(crate) struct RawConn {
    stream: TcpStream,
    /// What has been read and not yet returned.
    buffer: Vec<u8>,
}

/// `request` as the bytes of an HTTP/1.1 request with a `Content-Length`.
pub(crate) async fn encode(request: Request<Full<Bytes>>) -> Result<Vec<u8>, Failure> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    let mut out = format!("{} {} HTTP/1.1\r\n", parts.method, parts.uri).into_bytes();
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() || parts.method != hyper::Method::GET {
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    Ok(out)
}

impl RawConn {
    pub(crate) async fn connect(port: u16) -> Result<RawConn, Failure> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        Ok(RawConn {
            stream,
            buffer: Vec::with_capacity(16 * 1024),
        })
    }

    /// Send one request (bytes from [`encode`]) and read its response.
    pub(crate) async fn exchange(&mut self, request: &[u8]) -> Result<RawReply, Failure> {
        self.stream.write_all(request).await?;
        loop {
            if let Some(head) = head(&self.buffer)? {
                let end = head.start + head.length;
                while self.buffer.len() < end {
                    self.fill().await?;
                }
                let body = self.buffer[head.start..end].to_vec();
                self.buffer.drain(..end);
                return Ok(RawReply {
                    status: head.status,
                    retry_after: head.retry_after,
                    body,
                });
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> Result<(), Failure> {
        if self.stream.read_buf(&mut self.buffer).await? == 0 {
            return Err("the server closed the connection".into());
        }
        Ok(())
    }
}

/// What the head of a response says.
#[derive(Debug, PartialEq)]
struct Head {
    status: u16,
    retry_after: Option<u64>,
    /// Where the body starts in the buffer, and its length.
    start: usize,
    length: usize,
}

/// The head, once `buffer` holds a whole one.
fn head(buffer: &[u8]) -> Result<Option<Head>, Failure> {
    let Some(at) = buffer.windows(4).position(|window| window == b"\r\n\r\n") else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&buffer[..at])?;
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or("no status line")?;
    let (mut length, mut retry_after) = (None, None);
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or("a header line without a colon")?;
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.trim().parse()?);
        } else if name.eq_ignore_ascii_case("retry-after") {
            retry_after = value.trim().parse().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("a chunked response: this client reads only Content-Length".into());
        }
    }
    Ok(Some(Head {
        status,
        retry_after,
        start: at + 4,
        length: length.unwrap_or(0),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_found_only_when_whole_and_gives_status_and_body_bounds() {
        assert_eq!(head(b"HTTP/1.1 200 OK\r\ncontent-len").unwrap(), None);
        let response =
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\nretry-after: 1\r\n\r\n{}";
        let expected = Head {
            status: 503,
            retry_after: Some(1),
            start: response.len() - 2,
            length: 2,
        };
        assert_eq!(head(response).unwrap(), Some(expected));
        assert!(head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
    }
}
