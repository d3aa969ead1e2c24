//! A small HTTP/1.1 client for the measurements: one keep-alive connection per [`Conn`],
//! closed when the `Conn` is dropped.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::task::JoinHandle;

use crate::Failure;

/// One connection to 127.0.0.1:`port`. Dropping it closes the socket.
pub(crate) struct Conn<B> {
    pub(crate) sender: SendRequest<B>,
    driver: JoinHandle<()>,
}

impl<B> Drop for Conn<B> {
    fn drop(&mut self) {
        // The connection future owns the socket: aborting it closes the connection.
        self.driver.abort();
    }
}

impl<B> Conn<B> {
    /// Whether the connection has ended (the server closed it, or it failed).
    pub(crate) fn is_closed(&self) -> bool {
        self.sender.is_closed() || self.driver.is_finished()
    }
}

/// Connect and do the (client side of the) HTTP/1.1 handshake.
pub(crate) async fn connect<B>(port: u16) -> Result<Conn<B>, Failure>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Failure>,
{
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(Conn { sender, driver })
}

/// `GET path`.
pub(crate) fn get(port: u16, path: &str) -> Result<Request<Full<Bytes>>, Failure> {
    Ok(Request::builder()
        .method("GET")
        .uri(path)
        .header("host", format!("127.0.0.1:{port}"))
        .body(Full::new(Bytes::new()))?)
}

/// A request with the bearer token and an empty body (`GET` or `DELETE` of a file).
pub(crate) fn authorized(
    port: u16,
    token: &str,
    method: &str,
    path: &str,
) -> Result<Request<Full<Bytes>>, Failure> {
    Ok(Request::builder()
        .method(method)
        .uri(path)
        .header("host", format!("127.0.0.1:{port}"))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))?)
}

/// `POST path` with a JSON body and the bearer token; `accept` asks for a streamed reply.
pub(crate) fn post_json(
    port: u16,
    token: &str,
    path: &str,
    json: String,
    accept: Option<&str>,
) -> Result<Request<Full<Bytes>>, Failure> {
    let mut builder = Request::builder()
        .method("POST")
        .uri(path)
        .header("host", format!("127.0.0.1:{port}"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json");
    if let Some(accept) = accept {
        builder = builder.header("accept", accept);
    }
    Ok(builder.body(Full::new(Bytes::from(json)))?)
}

/// A whole reply.
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
}

impl Reply {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

/// Send `request` on `conn` and read the whole reply.
pub(crate) async fn send(
    conn: &mut Conn<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<Reply, Failure> {
    conn.sender.ready().await?;
    let response = conn.sender.send_request(request).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Reply {
        status: parts.status,

        body,
    })
}

/// One request on a fresh connection, within `within`.
pub(crate) async fn once(
    port: u16,
    request: Request<Full<Bytes>>,
    within: Duration,
) -> Result<Reply, Failure> {
    let exchange = async {
        let mut conn = connect(port).await?;
        send(&mut conn, request).await
    };
    tokio::time::timeout(within, exchange)
        .await
        .map_err(|_| format!("no reply within {} s", within.as_secs_f64()))?
}

/// `GET /health` as JSON.
pub(crate) async fn health(port: u16) -> Result<serde_json::Value, Failure> {
    let reply = once(port, get(port, "/health")?, Duration::from_secs(5)).await?;
    if !reply.status.is_success() {
        return Err(format!("GET /health answered {}", reply.status).into());
    }
    Ok(reply.json())
}
