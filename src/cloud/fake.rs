//! A file-backed fake cloud for tests that run several daemons without EC2: one JSON file holds
//! the ENI and its attachment, every operation takes an exclusive lock on it, and AWS's rule is
//! enforced (an ENI in use cannot be attached again). Selected only by the config's `[testing]`
//! table, never by default.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{
    AttachState, Attachment, ClaimOutcome, ClaimRequest, Cloud, CloudError, EniInfo, Identity,
    Ipv4Net, ReleaseOutcome,
};
use crate::ids::{EniId, InstanceId};
use crate::timeline::Step;

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
            CloudError::transient("fake-io", format!("{}: {e}", self.path.display()))
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
            .map_err(|e| CloudError::permanent("fake-corrupt", e.to_string()))?;
        if state.eni_id != self.eni.as_str() {
            return Err(CloudError::permanent(
                "not-found",
                format!("InvalidNetworkInterfaceID.NotFound: {}", self.eni),
            ));
        }
        let out = f(&mut state);
        let text = serde_json::to_string_pretty(&state)
            .map_err(|e| CloudError::permanent("fake-corrupt", e.to_string()))?;
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        out
    }

    fn info(&self, s: &FakeState) -> EniInfo {
        let attachment = s.attached_to.as_ref().and_then(|(i, idx)| {
            Some(Attachment {
                instance_id: i.parse().ok()?,
                attachment_id: format!("eni-attach-{:08x}", s.next_attachment),
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
        Box::pin(async move {
            self.with_state(|s| {
                let mut steps = Vec::new();
                let me = self.instance.as_str();
                match s.attached_to.clone() {
                    Some((holder, _)) if holder == me => {
                        return Ok(ClaimOutcome::Claimed {
                            info: self.info(s),
                            already_mine: true,
                            steps,
                        })
                    }
                    Some((holder, _))
                        if req.expected_holder.as_ref().map(InstanceId::as_str)
                            == Some(holder.as_str()) =>
                    {
                        steps.push(Step::now("detach requested"));
                        let action = if req.force { "detach-force" } else { "detach" };
                        self.record(s, action, "ok");
                        s.attached_to = None;
                        steps.push(Step::now("detached"));
                    }
                    Some((holder, _)) => {
                        let holder = holder.parse().map_err(|e: crate::ids::IdError| {
                            CloudError::permanent("fake-corrupt", e.to_string())
                        })?;
                        self.record(s, "attach", "InvalidNetworkInterface.InUse");
                        return Ok(ClaimOutcome::HeldBy { holder, steps });
                    }
                    None => {}
                }
                steps.push(Step::now("attach requested"));
                self.record(s, "attach", "ok");
                s.attached_to = Some((me.to_string(), req.device_index));
                s.next_attachment += 1;
                steps.push(Step::now("attached"));
                Ok(ClaimOutcome::Claimed {
                    info: self.info(s),
                    already_mine: false,
                    steps,
                })
            })
        })
    }

    fn release(&self) -> BoxFuture<'_, Result<ReleaseOutcome, CloudError>> {
        Box::pin(async move {
            self.with_state(|s| match &s.attached_to {
                Some((holder, _)) if holder == self.instance.as_str() => {
                    let mut steps = vec![Step::now("detach requested")];
                    self.record(s, "detach", "ok");
                    s.attached_to = None;
                    steps.push(Step::now("detached"));
                    Ok(ReleaseOutcome {
                        detached: true,
                        steps,
                    })
                }
                _ => Ok(ReleaseOutcome {
                    detached: false,
                    steps: Vec::new(),
                }),
            })
        })
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
            device_index: 1,
        };
        block(async {
            // c expects nobody: a holds it, so c must not detach a.
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
            [
                ("attach", "InvalidNetworkInterface.InUse"),
                ("detach-force", "ok"),
                ("attach", "ok"),
                ("detach", "ok")
            ]
        );
    }
}
