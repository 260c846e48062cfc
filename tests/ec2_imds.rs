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
use tokio::net::TcpListener;

#[tokio::test]
async fn identity_comes_from_imds_v2() {
    let moto = Moto::start();
    let ec2 = sdk_client(&moto.endpoint_url()).await;
    let lab = seed(&ec2).await;
    let unauthorized = Arc::new(AtomicUsize::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let imds = format!("http://{}", listener.local_addr().unwrap());
    let instance = Arc::new(std::sync::Mutex::new(lab.b.to_string()));
    tokio::spawn(support::imds::serve(
        listener,
        instance,
        unauthorized.clone(),
    ));
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
