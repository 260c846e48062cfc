//! `enipeer check --preflight`: read-only checks that this node can fail over, run against EC2
//! with the same client and retry budget as the daemon.

use std::time::Instant;

use aws_sdk_ec2::types::NetworkInterfaceAttachmentChanges;

use super::Ec2Cloud;
use crate::cloud::{CloudError, CloudErrorKind, EniInfo};
use crate::config::Settings;

/// One line of the preflight report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreflightCheck {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

impl PreflightCheck {
    fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        PreflightCheck {
            name: name.into(),
            ok: true,
            detail: detail.into(),
        }
    }

    fn fail(name: impl Into<String>, detail: impl Into<String>) -> Self {
        PreflightCheck {
            name: name.into(),
            ok: false,
            detail: detail.into(),
        }
    }
}

/// Interprets the answer to a `DryRun=true` request: `DryRunOperation` means allowed.
fn dry_run_check<T>(action: &str, res: Result<T, CloudError>) -> PreflightCheck {
    let name = format!("iam {action}");
    match res {
        Err(e) if e.kind == CloudErrorKind::DryRun => {
            PreflightCheck::pass(name, "allowed (DryRun)")
        }
        Err(e) if e.kind == CloudErrorKind::Unauthorized => PreflightCheck::fail(
            name,
            format!(
                "not allowed: grant {action} to this instance's role ({})",
                e.message
            ),
        ),
        Err(e) => PreflightCheck::fail(name, format!("could not check: {}", e.message)),
        Ok(_) => PreflightCheck::fail(
            name,
            "the endpoint ignored DryRun=true and performed the call",
        ),
    }
}

/// Checks that this node can fail over: the ENI exists in this instance's AZ and is nobody's
/// primary interface, IAM allows the four EC2 actions (by `DryRun=true`), and the configured
/// peers exist. Never changes anything.
pub async fn preflight(settings: &Settings) -> Vec<PreflightCheck> {
    let cloud = match Ec2Cloud::new(
        &settings.aws,
        settings.group.eni.clone(),
        settings.group.device_index,
        settings.node.instance_id.clone(),
    )
    .await
    {
        Ok(c) => c,
        Err(e) => return vec![PreflightCheck::fail("identity", e.to_string())],
    };
    let az = cloud.identity.availability_zone.as_deref();
    let mut checks = vec![PreflightCheck::pass(
        "identity",
        format!(
            "instance {} in {}",
            cloud.identity.instance_id,
            az.unwrap_or("unknown AZ")
        ),
    )];
    let deadline = cloud.deadline();
    let eni = cloud.eni.as_str();
    let info = match cloud.describe_full(deadline).await {
        Ok(info) => {
            checks.push(PreflightCheck::pass(
                "eni exists",
                format!(
                    "{eni}: {} {}{} mac {}",
                    info.status,
                    info.primary_ip,
                    ipv6_summary(&info),
                    info.mac
                ),
            ));
            checks.extend(placement_checks(&cloud, &info));
            Some(info)
        }
        Err(e) => {
            checks.push(PreflightCheck::fail("eni exists", format!("{eni}: {e}")));
            None
        }
    };
    checks.extend(iam_checks(&cloud, settings, info.as_ref(), deadline).await);
    for peer in &settings.peers {
        let Some(id) = &peer.instance_id else {
            continue;
        };
        let name = format!("peer {}", peer.name);
        checks.push(match cloud.instance_az(id, deadline).await {
            Ok(Some(az)) => PreflightCheck::pass(name, format!("{id} exists in {az}")),
            Ok(None) => PreflightCheck::fail(name, format!("instance {id} not found")),
            Err(e) if e.kind == CloudErrorKind::NotFound => {
                PreflightCheck::fail(name, format!("instance {id} not found"))
            }
            Err(e) => PreflightCheck::fail(name, format!("{id}: {e}")),
        });
    }
    checks
}

/// The ENI can move here: same Availability Zone, and nobody's primary interface.
fn placement_checks(cloud: &Ec2Cloud, info: &EniInfo) -> [PreflightCheck; 2] {
    let eni = cloud.eni.as_str();
    let mine = cloud.identity.availability_zone.as_deref();
    let theirs = info.availability_zone.as_deref();
    let az = match (mine, theirs) {
        (Some(a), Some(b)) if a == b => PreflightCheck::pass("same az", a),
        (Some(a), Some(b)) => PreflightCheck::fail(
            "same az",
            format!("{eni} is in {b} but this instance is in {a}: it can never attach here"),
        ),
        _ => PreflightCheck::fail("same az", "Availability Zone unknown"),
    };
    let primary = match &info.attachment {
        Some(a) if a.device_index == 0 => PreflightCheck::fail(
            "not a primary interface",
            format!(
                "{eni} is device index 0 (the primary interface) of {}: it cannot move",
                a.instance_id
            ),
        ),
        Some(a) => PreflightCheck::pass(
            "not a primary interface",
            format!(
                "attached to {} at device index {}",
                a.instance_id, a.device_index
            ),
        ),
        None => PreflightCheck::pass("not a primary interface", "not attached"),
    };
    [az, primary]
}

/// IAM allows the four EC2 actions of a failover, checked with `DryRun=true`.
async fn iam_checks(
    cloud: &Ec2Cloud,
    settings: &Settings,
    info: Option<&EniInfo>,
    deadline: Instant,
) -> Vec<PreflightCheck> {
    let eni = cloud.eni.as_str();
    let me = cloud.me().as_str();
    let index = i32::try_from(settings.group.device_index).unwrap_or(i32::MAX);
    let mut checks = Vec::new();
    let describe = cloud
        .call("DescribeNetworkInterfaces", deadline, || {
            cloud
                .client
                .describe_network_interfaces()
                .network_interface_ids(eni)
                .dry_run(true)
                .send()
        })
        .await;
    checks.push(dry_run_check("ec2:DescribeNetworkInterfaces", describe));
    let attach = cloud
        .call("AttachNetworkInterface", deadline, || {
            cloud
                .client
                .attach_network_interface()
                .network_interface_id(eni)
                .instance_id(me)
                .device_index(index)
                .dry_run(true)
                .send()
        })
        .await;
    checks.push(dry_run_check("ec2:AttachNetworkInterface", attach));
    // Detach and modify need an attachment id; when the ENI is not attached, a well-formed id
    // that names nothing still exercises the permission check, which EC2 does first.
    let attachment_id = info
        .and_then(|i| i.attachment.as_ref())
        .map(|a| a.attachment_id.clone())
        .unwrap_or_else(|| "eni-attach-00000000000000000".into());
    let detach = cloud
        .call("DetachNetworkInterface", deadline, || {
            cloud
                .client
                .detach_network_interface()
                .attachment_id(&attachment_id)
                .dry_run(true)
                .send()
        })
        .await;
    checks.push(dry_run_check("ec2:DetachNetworkInterface", detach));
    let changes = NetworkInterfaceAttachmentChanges::builder()
        .attachment_id(&attachment_id)
        .delete_on_termination(false)
        .build();
    let modify = cloud
        .call("ModifyNetworkInterfaceAttribute", deadline, || {
            cloud
                .client
                .modify_network_interface_attribute()
                .network_interface_id(eni)
                .attachment(changes.clone())
                .dry_run(true)
                .send()
        })
        .await;
    checks.push(dry_run_check("ec2:ModifyNetworkInterfaceAttribute", modify));
    checks
}

/// `enipeer check --preflight`: runs [`preflight`], prints one line per check and returns the
/// exit code (0 when every check passed).
pub fn preflight_command(settings: &Settings) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("preflight: cannot start the async runtime: {e}");
            return crate::exit::SOFTWARE;
        }
    };
    let checks = rt.block_on(preflight(settings));
    for c in &checks {
        println!(
            "{:<4}  {}: {}",
            if c.ok { "ok" } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    if checks.iter().all(|c| c.ok) {
        crate::exit::OK
    } else {
        crate::exit::FAILURE
    }
}

/// The ENI's IPv6 addresses for the preflight line (` + 2001:db8::25`), nothing when it has none.
fn ipv6_summary(info: &EniInfo) -> String {
    let Some(v6) = info.ipv6.as_deref() else {
        return String::new();
    };
    v6.addresses.iter().map(|a| format!(" + {a}")).collect()
}
