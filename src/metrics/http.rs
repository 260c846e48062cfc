//! The scrape endpoint: a minimal HTTP/1.1 responder for `GET /metrics`, in its own task, off the
//! event loop. One request per connection (`Connection: close`), requests parsed with httparse,
//! a few connections at a time and a deadline on each, so a stuck or hostile client costs a
//! socket and nothing else.
//!
//! Each scrape asks the loop for its [`RoleReport`](crate::report::RoleReport) the way
//! `enipeer role` does (a control request on the loop's channel) and refreshes the state gauges
//! from it. A loop that does not answer in time does not hold the scrape up: the counters are
//! served with the last gauges and `enipeer_loop_responsive 0`.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::debug;

use super::Metrics;
use crate::control::{Incoming, Request, Response};

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 4;
/// A whole request-response exchange, from accept to the last byte written.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);
/// How long a scrape waits for the loop's snapshot.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(2);
/// Request line and headers; a scraper sends a few hundred bytes.
const MAX_REQUEST: usize = 8192;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves until the task is aborted. `to_loop` is the loop's control channel.
pub async fn serve(
    listener: TcpListener,
    metrics: &'static Metrics,
    to_loop: mpsc::Sender<Incoming>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors or similar: pause rather than spin.
                debug!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let to_loop = to_loop.clone();
        tokio::spawn(async move {
            let done = tokio::time::timeout(CONNECTION_DEADLINE, answer(stream, metrics, &to_loop));
            if done.await.is_err() {
                debug!(%peer, "metrics connection timed out");
            }
            drop(permit);
        });
    }
}

async fn answer(mut stream: TcpStream, metrics: &Metrics, to_loop: &mpsc::Sender<Incoming>) {
    let reply = match read_request(&mut stream).await {
        Some(Route::Metrics) => {
            refresh(metrics, to_loop).await;
            response("200 OK", CONTENT_TYPE, &metrics.encode())
        }
        Some(Route::NotFound) => response(
            "404 Not Found",
            "text/plain; charset=utf-8",
            "enipeer serves GET /metrics only\n",
        ),
        Some(Route::BadMethod) => response(
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "GET only\n",
        ),
        None => response(
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "bad request\n",
        ),
    };
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Route {
    Metrics,
    NotFound,
    BadMethod,
}

/// Reads up to the end of the headers; `None` for a malformed, oversized or truncated request.
async fn read_request(stream: &mut TcpStream) -> Option<Route> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        match route(&buf) {
            Ok(Some(r)) => return Some(r),
            Ok(None) if buf.len() < MAX_REQUEST => continue,
            _ => return None,
        }
    }
}

/// `Ok(None)` while the headers are incomplete.
pub(super) fn route(buf: &[u8]) -> Result<Option<Route>, httparse::Error> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    if req.parse(buf)?.is_partial() {
        return Ok(None);
    }
    let path = req.path.unwrap_or("");
    let path = path.split('?').next().unwrap_or("");
    Ok(Some(match (req.method, path) {
        (Some("GET"), "/metrics") => Route::Metrics,
        (Some("GET"), _) => Route::NotFound,
        _ => Route::BadMethod,
    }))
}

fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Asks the loop for its snapshot and applies it; marks the gauges stale if no answer comes.
async fn refresh(metrics: &Metrics, to_loop: &mpsc::Sender<Incoming>) {
    let (reply, answer) = oneshot::channel();
    let asked = Incoming {
        request: Request::Role,
        reply,
    };
    let got = tokio::time::timeout(SNAPSHOT_WAIT, async {
        to_loop.send(asked).await.ok()?;
        answer.await.ok()
    })
    .await;
    match got {
        Ok(Some(Response::Role(report))) => metrics.apply(&report),
        _ => metrics.stale(),
    }
}
