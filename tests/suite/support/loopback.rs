//! Shared helpers: a real server on a loopback port and a real client.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use clink_webhooks::{sign, BoxError, Timestamp};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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

pub(crate) fn now_ms() -> String {
    Timestamp::now().as_millis().to_string()
}

/// A correctly signed delivery of `body`.
pub(crate) fn signed(addr: SocketAddr, body: &str) -> Request<Full<Bytes>> {
    let ts = now_ms();
    signed_with(addr, body, &ts, &sign(SECRET, &ts, body.as_bytes()))
}

pub(crate) fn signed_with(
    addr: SocketAddr,
    body: &str,
    ts: &str,
    sig: &str,
) -> Request<Full<Bytes>> {
    Request::post(format!("http://{addr}/webhooks/clink"))
        .header("content-type", "application/json")
        .header("x-clink-timestamp", ts)
        .header("x-clink-signature", sig)
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

pub(crate) async fn send(request: Request<Full<Bytes>>) -> Reply {
    let response = tokio::time::timeout(Duration::from_secs(20), client().request(request))
        .await
        .expect("the server answered within 20 s")
        .expect("the request reached the server");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    Reply {
        status,
        headers,
        json,
    }
}

pub(crate) async fn deliver(addr: SocketAddr, body: &str) -> Reply {
    send(signed(addr, body)).await
}

pub(crate) fn event(id: &str, event_type: &str, data: &str) -> String {
    format!(
        r#"{{"id":"{id}","object":"event","created":"2025-01-15T12:00:00.000Z","type":"{event_type}","data":{data}}}"#
    )
}

/// Sends raw bytes on a fresh connection and returns the status line's code,
/// reading until the headers end. Never waits more than 20 s.
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
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the server answered without waiting for the rest of the body");
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}
