//! A tiny IMDSv2 responder: token PUT, then GETs that need the token (401 without), answering
//! the instance id, Region and AZ. aws-config's IMDS client reaches it through
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT`. The instance id is shared so the lab can change it when
//! it reseeds the cloud.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use super::{AZ, REGION};

pub const TOKEN: &str = "test-token-1";

/// Serves IMDSv2 on `listener` until the task is dropped; counts requests without a valid token.
pub async fn serve(
    listener: TcpListener,
    instance_id: Arc<Mutex<String>>,
    unauthorized: Arc<AtomicUsize>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let instance_id = instance_id.clone();
        let unauthorized = unauthorized.clone();
        tokio::spawn(async move {
            let mut r = BufReader::new(stream);
            loop {
                let mut lines = Vec::new();
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let line = line.trim_end().to_owned();
                    if line.is_empty() {
                        break;
                    }
                    lines.push(line);
                }
                let Some(first) = lines.first() else { return };
                let mut first = first.split_whitespace();
                let method = first.next().unwrap_or_default().to_owned();
                let path = first.next().unwrap_or_default().to_owned();
                let token = lines.iter().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("x-aws-ec2-metadata-token")
                        .then(|| v.trim().to_owned())
                });
                let (status, body, extra) = match (method.as_str(), path.as_str()) {
                    ("PUT", "/latest/api/token") => (
                        200,
                        TOKEN.to_owned(),
                        "x-aws-ec2-metadata-token-ttl-seconds: 21600\r\n",
                    ),
                    ("GET", p) if token.as_deref() == Some(TOKEN) => match p {
                        "/latest/meta-data/instance-id" => (
                            200,
                            instance_id
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .clone(),
                            "",
                        ),
                        "/latest/meta-data/placement/availability-zone" => (200, AZ.to_owned(), ""),
                        "/latest/meta-data/placement/region" => (200, REGION.to_owned(), ""),
                        _ => (404, String::new(), ""),
                    },
                    _ => {
                        unauthorized.fetch_add(1, Ordering::SeqCst);
                        (401, String::new(), "")
                    }
                };
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{extra}\r\n{body}",
                    body.len()
                );
                if r.get_mut().write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}
