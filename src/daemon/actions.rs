//! One method per core [`Action`]: each carries the action out or hands it to a worker, and
//! decides nothing. None of them awaits the cloud or the host network config: the only awaits are
//! heartbeat sends (and the pauses between the last ones, at exit).

use std::fmt::Display;
use std::time::Duration;

use tracing::{info, warn};

use super::cloud_worker::CloudJob;
use super::plan::PlanUse;
use super::{signals, Daemon, EarlyHook};
use crate::cloud::ClaimRequest;
use crate::control::Response;
use crate::core::{Action, ClaimKind, HookKind, Role};
use crate::hooks::{HookEnv, Transition};
use crate::ids::InstanceId;
use crate::timeline::Kind;

impl Daemon {
    pub(super) async fn act(&mut self, action: Action) {
        match action {
            Action::Transitioned { from, to, reason } => {
                self.transitioned(&from, &to, &reason);
                self.checks_role_changed(to);
                self.early_master_hook(to, reason);
            }
            Action::Alert(alert) => self.alert(alert),
            Action::SendHeartbeat => self.send_heartbeat().await,
            Action::QueryCloud => self.query_cloud(),
            Action::Claim {
                expected_holder,
                force,
                kind,
                reason,
            } => self.claim(expected_holder, force, kind, reason),
            Action::Release => self.release(),
            Action::ApplyNet => self.apply_net().await,
            Action::RemoveNet => self.remove_net().await,
            Action::RunHooks {
                kind: HookKind::Master,
                ..
            } if self.early_hook == EarlyHook::Ran => self.early_hook = EarlyHook::Armed,
            Action::RunHooks { kind, reason } => self.run_hooks(kind, reason),
            Action::Reply { token, result } => self.reply(token, result),
            Action::Exit => self.exit().await,
        }
    }

    fn transitioned(&self, from: &impl Display, to: &impl Display, reason: &str) {
        info!(%from, %to, %reason, "transition");
        crate::metrics::transition(from, to);
        signals::notify(&[sd_notify::NotifyState::Status(&format!("{to}: {reason}"))]);
    }

    async fn send_heartbeat(&mut self) {
        self.hurry_probe_if_late();
        let advert = self.node.advert();
        crate::metrics::heartbeat_sent();
        if let Err(e) = self.peer.send(&advert).await {
            warn!(error = %e, "sending heartbeats failed");
        }
    }

    fn query_cloud(&self) {
        self.to_cloud(CloudJob::Query);
    }

    fn claim(
        &mut self,
        expected_holder: Option<InstanceId>,
        force: bool,
        kind: ClaimKind,
        reason: String,
    ) {
        self.timeline.claim_started(timeline_kind(kind), reason);
        if force {
            warn!(holder = ?expected_holder, "claiming with a FORCED detach: the holder is believed dead");
        }
        let req = ClaimRequest {
            expected_holder,
            force,
            device_indexes: self.settings.group.device_indexes.clone(),
        };
        let mac = self.eni.as_ref().map(|e| e.mac.clone());
        // The holder's attachment as the last look saw it: a forced detach needs no describe
        // first (a stale id fails, and the claim describes).
        let known_attachment = self
            .eni
            .as_ref()
            .and_then(|e| e.attachment.as_ref())
            .filter(|a| force && Some(&a.instance_id) == req.expected_holder.as_ref())
            .map(|a| a.attachment_id.clone());
        self.to_cloud(CloudJob::Claim {
            req,
            mac,
            known_attachment,
        });
    }

    fn release(&mut self) {
        self.timeline.mark(crate::timeline::Mark::ReleaseStarted);
        self.to_cloud(CloudJob::Release);
    }

    async fn apply_net(&mut self) {
        // Applying without a claim of ours before it: the ENI was already attached here.
        self.timeline
            .adopt_unless_running("ENI already attached here");
        self.with_plan(PlanUse::Apply).await;
    }

    async fn remove_net(&mut self) {
        self.with_plan(PlanUse::Remove).await;
    }

    /// Logs the alert and tells the operator's on-event hooks (rate-limited by the runner).
    fn alert(&mut self, alert: crate::core::Alert) {
        crate::alerts::log(&alert, &self.rejected_summary());
        if self.settings.hooks.on_event.is_empty() {
            return;
        }
        let mut env = self.hook_env(crate::alerts::summary(&alert));
        env.event = Some((alert.key().to_string(), crate::alerts::details(&alert)));
        self.hooks.run(Transition::Event, env);
    }

    fn run_hooks(&mut self, kind: HookKind, reason: String) {
        let transition = match kind {
            HookKind::Master => Transition::Master,
            HookKind::Backup => Transition::Backup,
            HookKind::Fault => Transition::Fault,
            HookKind::Stop => Transition::Stop,
        };
        let env = self.hook_env(reason);
        if transition == Transition::Master {
            self.timeline.mark(crate::timeline::Mark::HooksStarted);
        }
        self.hooks.run(transition, env);
    }

    /// The negative control's seam ([`EarlyHook`]): the on-master hook at the transition, before
    /// the host network exists, and the core's own one skipped.
    fn early_master_hook(&mut self, to: Role, reason: String) {
        if to == Role::Master && self.early_hook == EarlyHook::Armed {
            warn!("test seam: running the on-master hook before the host network is applied");
            self.run_hooks(HookKind::Master, reason);
            self.early_hook = EarlyHook::Ran;
        }
    }

    fn hook_env(&self, reason: String) -> HookEnv {
        HookEnv {
            node: self.settings.node.name.to_string(),
            role: self.node.role().to_string(),
            reason,
            eni: self.settings.group.eni.to_string(),
            interface: self.settings.network.interface_name.clone(),
            addresses: self
                .eni
                .as_ref()
                .map(|e| {
                    std::iter::once(e.primary_ip)
                        .chain(e.secondary_ips.iter().copied())
                        .collect()
                })
                .unwrap_or_default(),
            addresses_v6: self
                .eni
                .as_ref()
                .and_then(|e| e.ipv6.as_ref())
                .map(|v6| v6.addresses.clone())
                .unwrap_or_default(),
            event: None,
        }
    }

    fn reply(&mut self, token: u64, result: Result<String, String>) {
        if let Some(tx) = self.pending_yields.remove(&token) {
            let resp = match result {
                Ok(message) => Response::Yielded { message },
                Err(message) => Response::Error { message },
            };
            // The client may have hung up; the handover happened (or not) all the same.
            let _ = tx.send(resp);
        }
    }

    async fn exit(&mut self) {
        // The last heartbeat says "stopping" (and for how long); one lost datagram would make the
        // peer wait only the dead interval, so say it a few times.
        let advert = self.node.advert();
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = self.peer.send(&advert).await;
        }
        self.exit = true;
    }

    pub(super) fn to_cloud(&self, job: CloudJob) {
        // The worker lives as long as the loop holds this sender.
        let _ = self.cloud_tx.send(job);
    }
}

fn timeline_kind(kind: ClaimKind) -> Kind {
    match kind {
        ClaimKind::Failover => Kind::Failover,
        ClaimKind::Election => Kind::Election,
        ClaimKind::Yield => Kind::Yield,
        ClaimKind::Reclaim => Kind::Reclaim,
    }
}
