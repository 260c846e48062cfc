//! A file-backed fake cloud for tests that run several daemons without EC2: one JSON file holds
//! the ENI and its attachment, every operation takes an exclusive lock on it, and AWS's rule is
//! enforced (an ENI in use cannot be attached again). Selected only by the config's `[testing]`
//! table, never by default.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::claim::{self, Context, Limits, Primitives};
use super::{
    AttachState, Attachment, ClaimHints, ClaimOutcome, ClaimRequest, Cloud, CloudError,
    CloudErrorKind, EniInfo, Identity, Ipv4Net, ReleaseOutcome, Watched,
};
use crate::ids::{EniId, InstanceId};

/// The shared state, as stored in the file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FakeState {
    pub eni_id: String,
    pub mac: String,
    pub primary_ip: Ipv4Addr,
    pub subnet: Ipv4Addr,
    pub prefix: u8,
    /// Instance id and device index of the current attachment.
    pub attached_to: Option<(String, u32)>,
    pub next_attachment: u64,
    /// Every mutating call, for tests to assert on.
    pub calls: Vec<FakeCall>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FakeCall {
    pub unix_ms: u64,
    pub instance: String,
    pub action: String,
    /// "ok" or the AWS error code.
    pub result: String,
}

impl FakeState {
    pub fn new(eni: &str, holder: Option<&str>) -> Self {
        FakeState {
            eni_id: eni.into(),
            mac: "02:00:5e:10:00:25".into(),
            primary_ip: Ipv4Addr::new(198, 18, 1, 25),
            subnet: Ipv4Addr::new(198, 18, 1, 0),
            prefix: 24,
            attached_to: holder.map(|h| (h.to_string(), 1)),
            next_attachment: 1,
            calls: Vec::new(),
        }
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, text)
    }

    /// Reads the state under a shared lock, so a reader never sees a half-written file.
    pub fn read(path: &Path) -> std::io::Result<FakeState> {
        let mut file = File::open(path)?;
        file.lock_shared()?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        serde_json::from_str(&text).map_err(std::io::Error::other)
    }
}

/// The fake answers at once, so its procedures never come near a deadline; this only bounds a
/// bug.
const FAKE_DEADLINE: Duration = Duration::from_secs(10);

/// The id of the current attachment: it changes with every attach.
fn attachment_id_of(s: &FakeState) -> String {
    format!("eni-attach-{:08x}", s.next_attachment)
}

pub struct FileCloud {
    path: PathBuf,
    instance: InstanceId,
    eni: EniId,
}

impl FileCloud {
    pub fn new(path: PathBuf, instance: InstanceId, eni: EniId) -> Self {
        FileCloud {
            path,
            instance,
            eni,
        }
    }

    /// Runs `f` on the state under an exclusive lock and writes back what it returns.
    fn with_state<T>(
        &self,
        f: impl FnOnce(&mut FakeState) -> Result<T, CloudError>,
    ) -> Result<T, CloudError> {
        let io = |e: std::io::Error| {
            CloudError::new(
                CloudErrorKind::FakeIo,
                format!("{}: {e}", self.path.display()),
            )
        };
        let mut file: File = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(io)?;
        file.lock().map_err(io)?;
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(io)?;
        let mut state: FakeState = serde_json::from_str(&text)
            .map_err(|e| CloudError::new(CloudErrorKind::FakeCorrupt, e.to_string()))?;
        if state.eni_id != self.eni.as_str() {
            return Err(CloudError::new(
                CloudErrorKind::NotFound,
                format!("InvalidNetworkInterfaceID.NotFound: {}", self.eni),
            ));
        }
        let out = f(&mut state);
        let text = serde_json::to_string_pretty(&state)
            .map_err(|e| CloudError::new(CloudErrorKind::FakeCorrupt, e.to_string()))?;
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        out
    }

    fn info(&self, s: &FakeState) -> EniInfo {
        let attachment = s.attached_to.as_ref().and_then(|(i, idx)| {
            Some(Attachment {
                instance_id: i.parse().ok()?,
                attachment_id: attachment_id_of(s),
                device_index: *idx,
                state: AttachState::Attached,
                delete_on_termination: false,
            })
        });
        EniInfo {
            eni_id: self.eni.clone(),
            status: if attachment.is_some() {
                "in-use".into()
            } else {
                "available".into()
            },
            attachment,
            mac: s.mac.clone(),
            primary_ip: s.primary_ip,
            secondary_ips: Vec::new(),
            ipv6: None,
            subnet_cidr: Some(Ipv4Net {
                addr: s.subnet,
                prefix: s.prefix,
            }),
            availability_zone: Some("lab-1a".into()),
        }
    }

    fn record(&self, s: &mut FakeState, action: &str, result: &str) {
        let unix_ms = crate::timeline::unix_ms(SystemTime::now());
        s.calls.push(FakeCall {
            unix_ms,
            instance: self.instance.to_string(),
            action: action.into(),
            result: result.into(),
        });
    }
}

impl Cloud for FileCloud {
    fn identity(&self) -> BoxFuture<'_, Result<Identity, CloudError>> {
        Box::pin(async move {
            // Like instance metadata early in a boot, the fake cloud can be unreachable: a
            // missing state file fails here, retryably.
            self.with_state(|_| Ok(()))?;
            Ok(Identity {
                instance_id: self.instance.clone(),
                region: Some("lab-1".into()),
                availability_zone: Some("lab-1a".into()),
            })
        })
    }

    fn describe(&self) -> BoxFuture<'_, Result<EniInfo, CloudError>> {
        Box::pin(async move { self.with_state(|s| Ok(self.info(s))) })
    }

    fn claim(&self, req: ClaimRequest) -> BoxFuture<'_, Result<ClaimOutcome, CloudError>> {
        Box::pin(claim::run_claim(self, req))
    }

    fn claim_watching<'a>(
        &'a self,
        req: ClaimRequest,
        hints: ClaimHints<'a>,
    ) -> BoxFuture<'a, Watched> {
        Box::pin(claim::run_claim_watching(self, req, hints))
    }

    fn release(&self) -> BoxFuture<'_, Result<ReleaseOutcome, CloudError>> {
        Box::pin(claim::run_release(self))
    }
}

/// The primitives, each one locked read-modify-write of the state file. Attach and detach take
/// effect at once (the fake has no `attaching`/`detaching` phase), but AWS's rules hold: an ENI
/// in use cannot be attached again, device index 0 is the primary interface, and a detach names
/// the current attachment or fails as not found.
impl Primitives for FileCloud {
    fn context(&self) -> Context {
        Context {
            me: self.instance.clone(),
            eni: self.eni.clone(),
            limits: Limits {
                deadline: FAKE_DEADLINE,
                force_detach_grace: FAKE_DEADLINE,
                poll_jitter: || 1.0,
            },
        }
    }

    fn describe_eni(&self, _deadline: Instant) -> BoxFuture<'_, Result<EniInfo, CloudError>> {
        Box::pin(async move { self.with_state(|s| Ok(self.info(s))) })
    }

    fn attach(
        &self,
        device_index: u32,
        _deadline: Instant,
    ) -> BoxFuture<'_, Result<(), CloudError>> {
        Box::pin(async move {
            self.with_state(|s| {
                if s.attached_to.is_some() {
                    self.record(s, "attach", "InvalidNetworkInterface.InUse");
                    return Err(CloudError::new(
                        CloudErrorKind::InUse,
                        format!("Interface: [{}] in use.", self.eni),
                    ));
                }
                if device_index == 0 {
                    self.record(s, "attach", "InvalidParameterValue");
                    return Err(CloudError::new(
                        CloudErrorKind::InvalidParameter,
                        "device index 0 is the primary interface",
                    ));
                }
                self.record(s, "attach", "ok");
                s.attached_to = Some((self.instance.to_string(), device_index));
                s.next_attachment += 1;
                Ok(())
            })
        })
    }

    fn detach<'a>(
        &'a self,
        attachment_id: &'a str,
        force: bool,
        _deadline: Instant,
    ) -> BoxFuture<'a, Result<(), CloudError>> {
        Box::pin(async move {
            self.with_state(|s| {
                let action = if force { "detach-force" } else { "detach" };
                if s.attached_to.is_none() || attachment_id != attachment_id_of(s) {
                    self.record(s, action, "InvalidAttachmentID.NotFound");
                    return Err(CloudError::new(
                        CloudErrorKind::NotFound,
                        format!("InvalidAttachmentID.NotFound: {attachment_id}"),
                    ));
                }
                self.record(s, action, "ok");
                s.attached_to = None;
                Ok(())
            })
        })
    }

    fn keep_on_termination<'a>(
        &'a self,
        _attachment_id: &'a str,
        _deadline: Instant,
    ) -> BoxFuture<'a, Result<(), CloudError>> {
        // The fake never sets delete-on-termination, so the procedure never asks.
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(i: &str) -> (InstanceId, EniId) {
        (i.parse().unwrap(), "eni-0123abcd".parse().unwrap())
    }

    fn block<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn enforces_single_attachment_and_compare_and_swap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cloud.json");
        FakeState::new("eni-0123abcd", Some("i-0000000a"))
            .write(&path)
            .unwrap();
        let (a, eni) = ids("i-0000000a");
        let (b, _) = ids("i-0000000b");
        let (c, _) = ids("i-0000000c");
        let ca = FileCloud::new(path.clone(), a.clone(), eni.clone());
        let cb = FileCloud::new(path.clone(), b.clone(), eni.clone());
        let cc = FileCloud::new(path.clone(), c, eni);
        let req = |h: Option<&InstanceId>| ClaimRequest {
            expected_holder: h.cloned(),
            force: true,
            device_indexes: vec![1],
        };
        block(async {
            // c expects nobody: a holds it, so c must not detach a (nor try to attach).
            match cc.claim(req(None)).await.unwrap() {
                ClaimOutcome::HeldBy { holder, .. } => assert_eq!(holder, a),
                other => panic!("{other:?}"),
            }
            // b expects a: detaches and attaches.
            assert!(matches!(
                cb.claim(req(Some(&a))).await.unwrap(),
                ClaimOutcome::Claimed {
                    already_mine: false,
                    ..
                }
            ));
            assert_eq!(cb.describe().await.unwrap().holder(), Some(&b));
            // Idempotent.
            assert!(matches!(
                cb.claim(req(Some(&a))).await.unwrap(),
                ClaimOutcome::Claimed {
                    already_mine: true,
                    ..
                }
            ));
            // Release from a non-holder changes nothing; from the holder detaches.
            assert!(!ca.release().await.unwrap().detached);
            assert!(cb.release().await.unwrap().detached);
            assert_eq!(ca.describe().await.unwrap().holder(), None);
        });
        let calls = FakeState::read(&path).unwrap().calls;
        let actions: Vec<_> = calls
            .iter()
            .map(|c| (c.action.as_str(), c.result.as_str()))
            .collect();
        assert_eq!(
            actions,
            [("detach-force", "ok"), ("attach", "ok"), ("detach", "ok")]
        );
    }
}
