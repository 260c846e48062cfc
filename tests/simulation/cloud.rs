//! The model cloud: deterministic randomness, the ENI's attachment as EC2 keeps it, and the glue
//! between the production claim/release step machines and the simulation's events.

use std::time::Duration;

use enipeer::cloud::claim::{Call, Context, Limits, Next};
use enipeer::cloud::{
    AttachState, Attachment, ClaimOutcome, CloudError, CloudErrorKind, EniInfo, Ipv4Net,
    ReleaseOutcome,
};
use enipeer::core::{ClaimResult, CloudView, Event, Failure, Time};
use enipeer::ids::InstanceId;

// ---------- deterministic randomness ----------

pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        // splitmix64: tiny, good enough for schedules, identical on every platform.
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

// ---------- the fake cloud ----------

pub const ENI: &str = "eni-0000e001";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttState {
    Attaching,
    Attached,
    Detaching,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Att {
    pub node: usize,
    pub state: AttState,
    /// Bumped on every change so scheduled transitions for an old attachment are ignored.
    pub version: u64,
    /// Names the attachment (new on every attach): a detach of an older one is not found.
    pub id: u64,
    pub delete_on_termination: bool,
}

impl Att {
    /// An attachment made at launch: attached, and (as the console does) deleted on termination.
    pub fn launched(node: usize) -> Att {
        Att {
            node,
            state: AttState::Attached,
            version: 0,
            id: 0,
            delete_on_termination: true,
        }
    }
}

#[derive(Debug, Default)]
pub struct Cloud {
    pub att: Option<Att>,
    pub version: u64,
    pub next_id: u64,
    /// (time, new holder) for every completed attach and detach.
    pub history: Vec<(Time, Option<usize>)>,
    pub in_use_rejections: u32,
    /// Probability that one API call fails with a transient error.
    pub error_rate: f64,
    /// Procedures started: claims and releases.
    pub claims: u32,
    pub releases: u32,
    /// The attachment before the last change, and when it changed: what a stale read shows.
    pub before: Option<Att>,
    pub changed_at: Time,
    /// Until then, reads shortly after a change may be stale (eventual consistency).
    pub stale_until: Time,
    /// Until then, normal detaches stay in `detaching` for seconds.
    pub stuck_until: Time,
}

impl Cloud {
    pub fn holder_view(att: Option<Att>) -> CloudView {
        match att {
            Some(Att {
                node,
                state: AttState::Attached | AttState::Attaching,
                ..
            }) => CloudView::Holder(instance_id(node)),
            _ => CloudView::Nobody,
        }
    }

    /// DescribeNetworkInterfaces, as EC2 would answer it.
    pub fn describe(att: Option<Att>) -> EniInfo {
        let attachment = att.map(|a| Attachment {
            instance_id: instance_id(a.node),
            attachment_id: attachment_id(a.id),
            device_index: 1,
            state: match a.state {
                AttState::Attaching => AttachState::Attaching,
                AttState::Attached => AttachState::Attached,
                AttState::Detaching => AttachState::Detaching,
            },
            delete_on_termination: a.delete_on_termination,
        });
        EniInfo {
            eni_id: ENI.parse().expect("a valid ENI id"),
            status: if attachment.is_some() {
                "in-use"
            } else {
                "available"
            }
            .into(),
            attachment,
            mac: "02:00:5e:10:00:25".into(),
            primary_ip: "198.18.1.25".parse().expect("an address"),
            secondary_ips: Vec::new(),
            ipv6: None,
            subnet_cidr: Some(Ipv4Net {
                addr: "198.18.1.0".parse().expect("an address"),
                prefix: 24,
            }),
            availability_zone: Some("sim-1a".into()),
        }
    }
}

pub fn attachment_id(id: u64) -> String {
    format!("eni-attach-{id:08x}")
}

pub fn instance_id(node: usize) -> InstanceId {
    instance(node).parse().expect("a valid instance id")
}

pub fn instance(node: usize) -> String {
    format!("i-{:08x}", 0xa0 + node)
}

/// The procedures' context for one node: the same deadline as the old model's (10 s) and the
/// default grace before a normal detach is forced; no poll jitter, so a seed replays exactly.
pub fn context(node: usize) -> Context {
    Context {
        me: instance_id(node),
        eni: ENI.parse().expect("a valid ENI id"),
        limits: Limits {
            deadline: Duration::from_secs(10),
            force_detach_grace: Duration::from_secs(2),
            poll_jitter: || 1.0,
        },
    }
}

/// What the simulation does with a procedure's next step.
pub enum Then {
    Call(Call),
    Wait(Duration),
    Deliver(Event),
}

pub fn then<T>(next: Next<T>, event: fn(Result<T, CloudError>) -> Event) -> Then {
    match next {
        Next::Call(c) => Then::Call(c),
        Next::Wait(d) => Then::Wait(d),
        Next::Done(out) => Then::Deliver(event(out)),
    }
}

/// As `daemon::failure` does it.
pub fn failure(e: &CloudError) -> Failure {
    Failure {
        retryable: e.retryable(),
        message: e.to_string(),
    }
}

pub fn claim_event(out: Result<ClaimOutcome, CloudError>) -> Event {
    Event::ClaimDone(match out {
        Ok(ClaimOutcome::Claimed { .. }) => Ok(ClaimResult::Claimed),
        Ok(ClaimOutcome::HeldBy { holder, .. }) => Ok(ClaimResult::HeldBy(holder)),
        Err(e) => Err(failure(&e)),
    })
}

pub fn release_event(out: Result<ReleaseOutcome, CloudError>) -> Event {
    Event::ReleaseDone(out.map(drop).map_err(|e| failure(&e)))
}

pub fn not_found(attachment_id: &str) -> CloudError {
    CloudError::new(
        CloudErrorKind::NotFound,
        format!("InvalidAttachmentID.NotFound: {attachment_id}"),
    )
}
