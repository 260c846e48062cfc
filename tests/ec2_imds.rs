//! Identity from instance metadata: a tiny IMDSv2 responder (token PUT, then GETs; 401 without a
//! token) that aws-config's IMDS client reaches through `AWS_EC2_METADATA_SERVICE_ENDPOINT`, with
//! moto behind the EC2 endpoint. One test per binary, because the endpoint is process-wide.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use enipeer::cloud::ec2::Ec2Cloud;
use enipeer::cloud::Cloud;
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const TOKEN: &str = "test-token-1";

/// Serves IMDSv2 for one instance; counts requests that came without a valid token.
async fn imds_responder(instance_id: String, unauthorized: Arc<AtomicUsize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
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
                    let mut first = lines[0].split_whitespace();
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
                            "/latest/meta-data/instance-id" => (200, instance_id.clone(), ""),
                            "/latest/meta-data/placement/availability-zone" => {
                                (200, AZ.to_owned(), "")
                            }
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
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn identity_comes_from_imds_v2() {
    let moto = Moto::start();
    let ec2 = sdk_client(&moto.endpoint_url()).await;
    let lab = seed(&ec2).await;
    let unauthorized = Arc::new(AtomicUsize::new(0));
    let imds = imds_responder(lab.b.to_string(), unauthorized.clone()).await;
    // The only test in this binary: nothing else reads the environment concurrently.
    std::env::set_var("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds);

    let mut aws = aws_settings(&moto.endpoint_url(), Duration::from_secs(5));
    aws.region = None;
    let cloud = Ec2Cloud::new(&aws, lab.eni.clone(), 1, None).await.unwrap();
    let id = cloud.identity().await.unwrap();
    assert_eq!(id.instance_id, lab.b);
    assert_eq!(id.availability_zone.as_deref(), Some(AZ));
    assert_eq!(id.region.as_deref(), Some(REGION));
    assert_eq!(
        unauthorized.load(Ordering::SeqCst),
        0,
        "every GET carried the token"
    );
    // The client built with the Region from IMDS works.
    assert_eq!(cloud.describe().await.unwrap().primary_ip, ENI_IP);
}
