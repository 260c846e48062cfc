//! The peer table: what this node knows of each peer from its heartbeats, and the questions the
//! roles ask of it: is a peer alive, who is the best candidate for the ENI, which peer an
//! instance id belongs to.

use std::collections::BTreeMap;
use std::time::Duration;

use super::advert::{Advert, Role};
use super::config::CoreConfig;
use super::events::Time;
use crate::ids::{InstanceId, NodeName};

/// What this node knows about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerState {
    pub name: NodeName,
    pub instance_id: Option<InstanceId>,
    pub last_heard: Option<Time>,
    pub advert: Option<Advert>,
    pub incarnation: Option<u64>,
    /// When the peer's advertised role last changed.
    pub role_since: Time,
}

#[derive(Debug, Clone)]
pub(super) struct Peers {
    map: BTreeMap<NodeName, PeerState>,
    /// When this node started: a peer never heard gets one dead interval from then.
    started: Time,
}

impl Peers {
    pub fn new(cfg: &CoreConfig, now: Time) -> Self {
        let map = cfg
            .peers
            .iter()
            .map(|(name, instance_id)| {
                let p = PeerState {
                    name: name.clone(),
                    instance_id: instance_id.clone(),
                    last_heard: None,
                    advert: None,
                    incarnation: None,
                    role_since: now,
                };
                (name.clone(), p)
            })
            .collect();
        Peers { map, started: now }
    }

    pub fn started(&self) -> Time {
        self.started
    }

    pub fn iter(&self) -> impl Iterator<Item = &PeerState> {
        self.map.values()
    }

    pub fn get(&self, name: &str) -> Option<&PeerState> {
        self.map.get(name)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut PeerState> {
        self.map.get_mut(name)
    }

    /// Records a heartbeat; false when the sender is not a configured peer.
    pub fn heard(&mut self, name: &str, advert: &Advert, incarnation: u64, now: Time) -> bool {
        let Some(peer) = self.map.get_mut(name) else {
            return false;
        };
        if peer.advert.as_ref().map(|a| a.role) != Some(advert.role)
            || peer.incarnation != Some(incarnation)
        {
            peer.role_since = now;
        }
        peer.last_heard = Some(now);
        peer.incarnation = Some(incarnation);
        peer.instance_id = Some(advert.instance_id.clone());
        peer.advert = Some(advert.clone());
        true
    }

    /// How long a peer may be silent before it counts as dead: a peer that said it is
    /// restarting gets the grace it asked for.
    pub fn dead_after(&self, p: &PeerState, cfg: &CoreConfig) -> Duration {
        match &p.advert {
            Some(a) if a.stopping_ms > 0 => cfg
                .dead_interval
                .max(Duration::from_millis(u64::from(a.stopping_ms))),
            _ => cfg.dead_interval,
        }
    }

    pub fn alive(&self, p: &PeerState, cfg: &CoreConfig, now: Time) -> bool {
        let last = p.last_heard.unwrap_or(self.started);
        now.saturating_sub(last) <= self.dead_after(p, cfg)
            && (p.last_heard.is_some() || now.saturating_sub(self.started) <= cfg.dead_interval)
    }

    pub fn is_alive(&self, name: &str, cfg: &CoreConfig, now: Time) -> bool {
        self.get(name).is_some_and(|p| self.alive(p, cfg, now))
    }

    /// Heard within the dead interval (ignores restart grace: a restarting peer is not audible).
    pub fn audible(&self, name: &str, cfg: &CoreConfig, now: Time) -> bool {
        self.get(name)
            .and_then(|p| p.last_heard)
            .is_some_and(|h| now.saturating_sub(h) <= cfg.dead_interval)
    }

    /// A peer that could take the ENI: alive, not in fault, not stopping, not stuck starting.
    pub fn candidate(&self, p: &PeerState, cfg: &CoreConfig, now: Time) -> bool {
        let Some(a) = &p.advert else {
            return false;
        };
        if !self.audible(&p.name, cfg, now) {
            return false;
        }
        match a.role {
            _ if !a.healthy || a.maintenance => false,
            Role::Fault | Role::Releasing => false,
            _ if a.stopping_ms > 0 => false,
            Role::Starting => now.saturating_sub(p.role_since) <= cfg.dead_interval * 2,
            _ => true,
        }
    }

    /// The best peer to hand the ENI to (or that would claim it), `except` one, as
    /// (priority, name).
    pub fn best(
        &self,
        cfg: &CoreConfig,
        now: Time,
        except: Option<&str>,
    ) -> Option<(u8, &NodeName)> {
        let mut best: Option<(u8, &NodeName)> = None;
        for p in self.map.values() {
            if Some(p.name.as_str()) == except || !self.candidate(p, cfg, now) {
                continue;
            }
            let prio = p.advert.as_ref().map_or(0, |a| a.priority);
            if best.is_none_or(|(bp, bn)| better(prio, p.name.as_str(), bp, bn.as_str())) {
                best = Some((prio, &p.name));
            }
        }
        best
    }

    /// Which peer an instance id belongs to. With one peer whose id is not known yet, an
    /// unknown holder can only be that peer (a two-node group after a restart of this node).
    pub fn by_instance(&self, instance: &InstanceId, me: &InstanceId) -> Option<NodeName> {
        if let Some(p) = self
            .map
            .values()
            .find(|p| p.instance_id.as_ref() == Some(instance))
        {
            return Some(p.name.clone());
        }
        let mut unknown = self.map.values().filter(|p| p.instance_id.is_none());
        match (unknown.next(), unknown.next()) {
            (Some(only), None) if instance != me => Some(only.name.clone()),
            _ => None,
        }
    }

    /// The earliest time at which some peer that is alive now would count as dead.
    pub fn next_death(&self, cfg: &CoreConfig, now: Time) -> Option<Time> {
        self.map
            .values()
            .filter_map(|p| {
                p.last_heard
                    .map(|h| h + self.dead_after(p, cfg) + Duration::from_millis(1))
            })
            .filter(|t| *t > now)
            .min()
    }
}

/// Election order: higher priority wins, then the lexically smaller name.
pub(super) fn better(prio: u8, name: &str, than_prio: u8, than_name: &str) -> bool {
    prio > than_prio || (prio == than_prio && name < than_name)
}
