//! A real server on a loopback port, a real client, and deliveries signed
//! with the test kit to send it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use clink_webhooks::testing::{SignedRequest, DEFAULT_PATH};
use clink_webhooks::BoxError;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::process::PATIENCE;
use super::secrets;

pub(crate) const SECRET: &str = "whsec_test_123";

/// Serves `service` over HTTP/1.1 on 127.0.0.1 until the test ends.
pub(crate) async fn serve<S, ResB>(service: S) -> SocketAddr
where
    S: tower::Service<Request<Incoming>, Response = Response<ResB>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: http::HeaderMap,
    pub(crate) json: serde_json::Value,
}

impl Reply {
    pub(crate) fn error_code(&self) -> &str {
        self.json["error"].as_str().unwrap_or("")
    }
}

pub(crate) fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// `path` on the server at `addr`, as the absolute URI a client needs.
pub(crate) fn endpoint(addr: SocketAddr, path: &str) -> Uri {
    format!("http://{addr}{path}")
        .parse()
        .expect("a loopback address and a path make a URI")
}

/// A delivery of `body` to the endpoint at `addr`, signed with [`SECRET`]
/// when it is built.
pub(crate) fn signed(addr: SocketAddr, body: &str) -> SignedRequest {
    SignedRequest::new(SECRET, body.to_owned()).uri(endpoint(addr, DEFAULT_PATH))
}

/// Sends `request` and reads the whole answer. Every answer is checked for
/// the signing key ([`SECRET`], in any of its [forms](secrets::forms)) in
/// its headers and body.
pub(crate) async fn send(request: Request<Full<Bytes>>) -> Reply {
    let response = tokio::time::timeout(PATIENCE, client().request(request))
        .await
        .unwrap_or_else(|_| panic!("the server did not answer within {PATIENCE:?}"))
        .expect("the request reached the server");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = format!("{headers:?}\n{}", String::from_utf8_lossy(&bytes));
    secrets::assert_no_key("a response", &text, &[SECRET]);
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    Reply {
        status,
        headers,
        json,
    }
}

/// Sends a correctly signed delivery of `body` to the endpoint at `addr`.
pub(crate) async fn deliver(addr: SocketAddr, body: &str) -> Reply {
    send(signed(addr, body).build()).await
}

pub(crate) fn event(id: &str, event_type: &str, data: &str) -> String {
    format!(
        r#"{{"id":"{id}","object":"event","created":"2025-01-15T12:00:00.000Z","type":"{event_type}","data":{data}}}"#
    )
}

/// The head of `request` as HTTP/1.1 text, for [`raw_exchange`]: the request
/// line, its headers, the `framing` header line (`content-length: ...` or
/// `transfer-encoding: chunked`) and the blank line that ends the head.
pub(crate) fn http1_head<B>(request: &Request<B>, framing: &str) -> String {
    let mut head = format!(
        "{} {} HTTP/1.1\r\nhost: x\r\n",
        request.method(),
        request.uri().path()
    );
    for (name, value) in request.headers() {
        let value = value.to_str().expect("the test's header values are text");
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(framing);
    head.push_str("\r\n\r\n");
    head
}

/// Sends raw bytes on a fresh connection and returns the status line's code,
/// reading until the headers end. Waits at most [`PATIENCE`], which only
/// bounds a hang: a server that waited for the rest of the body would answer
/// when its body timeout ends, with a `408` the caller does not expect.
pub(crate) async fn raw_exchange(addr: SocketAddr, head: &str, body_parts: &[&[u8]]) -> u16 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    for part in body_parts {
        stream.write_all(part).await.unwrap();
    }
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .unwrap_or_else(|_| panic!("the server did not answer within {PATIENCE:?}"));
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

/// What a client does once it has sent its part of a raw request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ThenClient {
    /// Keeps the connection open and waits for the answer.
    Waits,
    /// Closes its sending half (the body ends early) and waits for the answer.
    StopsSending,
}

/// The answer to a raw request: status, body, and how long it took to come.
#[derive(Debug)]
pub(crate) struct RawReply {
    pub(crate) status: u16,
    pub(crate) body: String,
    pub(crate) elapsed: Duration,
}

impl RawReply {
    /// The `error` code of a refusal's JSON body.
    pub(crate) fn error_code(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|json| json["error"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// Sends `head` and `body_parts` on a fresh connection, does what `then`
/// says, and reads the whole answer (until the server closes the
/// connection, or the body its `content-length` announces has come). The
/// answer is checked for the signing key like [`send`]'s. Waits at most
/// [`PATIENCE`], which only bounds a hang; the caller checks how long the
/// answer took from `elapsed`.
pub(crate) async fn raw_request(
    addr: SocketAddr, head: &str, body_parts: &[&[u8]], then: ThenClient,
) -> RawReply {
    let started = std::time::Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    for part in body_parts {
        stream.write_all(part).await.unwrap();
    }
    if then == ThenClient::StopsSending {
        stream.shutdown().await.unwrap();
    }
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if response_complete(&buf) {
                break;
            }
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .unwrap_or_else(|_| panic!("the server did not answer within {PATIENCE:?}"));
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&buf).into_owned();
    secrets::assert_no_key("a response", &text, &[SECRET]);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    RawReply {
        status,
        body,
        elapsed,
    }
}

/// Whether `buf` holds a whole response with a `content-length` body.
fn response_complete(buf: &[u8]) -> bool {
    let text = String::from_utf8_lossy(buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok())
        .is_some_and(|length| body.len() >= length)
}

/// A loopback port where nothing listens, kept for as long as the socket
/// returned lives: bound but never listening, so a connection to it is
/// refused, and no other test or process can take the port meanwhile (as
/// one that was free a moment ago can be).
pub(crate) fn refusing_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    (socket, port)
}

#[test]
fn a_refusing_port_refuses() {
    let (_held, port) = refusing_port();
    let refused = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
}
