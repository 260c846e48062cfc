//! The claim and release procedures, written once for every cloud.
//!
//! A claim is a compare-and-swap on the ENI's attachment: it detaches only the holder the caller
//! expects (forcing only when asked, or when a normal detach outlives the grace), attaches here,
//! waits for `attached` and clears delete-on-termination. A release detaches this instance's own
//! attachment, never forcing, and waits until it is gone.
//!
//! Both are sans-IO step machines ([`ClaimProc`], [`ReleaseProc`]): each [`Procedure::next`]
//! takes the time since the procedure started and the answer to the last [`Call`], and says what
//! to do next: make a call, wait (a poll delay, see [`PollSchedule`]), or stop with the outcome.
//! The machines own every decision, the timeline steps and the poll deadline; whoever drives them
//! owns the I/O: [`run`] and [`run_claim_watching`] drive them against any [`Primitives`] (EC2,
//! the file-backed fake), and the simulation drives the same machines through its event queue
//! against its fake clock.
//!
//! A claim has one input besides the answers: [`ClaimProc::link_seen`], the hot-plugged link with
//! the ENI's MAC appearing on this host after the attach was requested. That is the attachment
//! done, whatever the API says yet: the machine hands out an [`EarlyClaim`] for the host to act
//! on, and goes on polling until the API says `attached` (or names someone else, which the caller
//! handles as a lost claim). A driver that never reports the link (the simulation, a host that
//! cannot watch links) gets the claim as before, when the API says `attached`.

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tracing::{info, warn};

use super::{
    AttachState, CallCount, ClaimHints, ClaimOutcome, ClaimRequest, CloudError, CloudErrorKind,
    EarlyClaim, EniInfo, Ipv4Net, Ipv6Net, PollSchedule, ReleaseOutcome, Watched,
};
use crate::ids::{EniId, InstanceId};
use crate::timeline::{Mark, Step};

/// One primitive cloud call a procedure asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// Read the ENI and its attachment.
    Describe,
    /// Attach the ENI to this instance at a device index.
    Attach { device_index: u32 },
    /// Detach an attachment, with `Force=true` or without.
    Detach { attachment_id: String, force: bool },
    /// Clear delete-on-termination on an attachment, so terminating the holder keeps the ENI.
    KeepOnTermination { attachment_id: String },
}

/// The answer to a successful [`Call`].
#[derive(Debug, Clone)]
pub enum Reply {
    /// The answer to [`Call::Describe`].
    Described(EniInfo),
    /// The answer to every other call: accepted (the change itself may still be under way).
    Accepted,
}

/// What a procedure wants next.
#[derive(Debug, Clone)]
pub enum Next<T> {
    Call(Call),
    /// Sleep this long, then call `next` with no answer.
    Wait(Duration),
    Done(Result<T, CloudError>),
}

/// The time budget of one procedure.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A poll that would end past this (from the start) fails the procedure with `Deadline`.
    pub deadline: Duration,
    /// How long a normal detach of the expected holder may take before it is forced.
    pub force_detach_grace: Duration,
    /// A fraction in 0..=1 that spreads poll delays (80 to 100 % of the schedule's), so two nodes
    /// polling the same ENI do not stay in step. A plain function so a simulation can pass a
    /// constant.
    pub poll_jitter: fn() -> f64,
}

/// Who runs the procedure, on which ENI, within which limits.
#[derive(Debug, Clone)]
pub struct Context {
    pub me: InstanceId,
    pub eni: EniId,
    pub limits: Limits,
}

/// A step machine: see the module documentation.
pub trait Procedure {
    type Output;
    /// `elapsed` is the time since the procedure started; `last` is the answer to the call the
    /// previous step asked for, or `None` at the start and after a wait.
    fn next(
        &mut self,
        elapsed: Duration,
        last: Option<Result<Reply, CloudError>>,
    ) -> Next<Self::Output>;
}

/// The primitive calls a cloud offers the procedures. Each bounds its own attempts by `deadline`
/// (EC2 retries throttling inside it); the procedures never see a retryable error that a retry
/// within the deadline could have fixed.
pub trait Primitives: Send + Sync {
    fn context(&self) -> Context;
    /// How often to look at an attachment in transition.
    fn poll_schedule(&self) -> PollSchedule {
        PollSchedule::default()
    }
    fn describe_eni(&self, deadline: Instant) -> BoxFuture<'_, Result<EniInfo, CloudError>>;
    fn attach(&self, device_index: u32, deadline: Instant)
        -> BoxFuture<'_, Result<(), CloudError>>;
    fn detach<'a>(
        &'a self,
        attachment_id: &'a str,
        force: bool,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<(), CloudError>>;
    fn keep_on_termination<'a>(
        &'a self,
        attachment_id: &'a str,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<(), CloudError>>;
}

/// Drives a procedure against real primitives, in real time.
pub async fn run<P, M>(p: &P, mut m: M) -> Result<M::Output, CloudError>
where
    P: Primitives + ?Sized,
    M: Procedure,
{
    let started = Instant::now();
    let deadline = started + p.context().limits.deadline;
    let mut last = None;
    loop {
        last = match m.next(started.elapsed(), last.take()) {
            Next::Done(out) => return out,
            Next::Call(call) => Some(perform(p, call, deadline).await),
            Next::Wait(d) => {
                tokio::time::sleep(d).await;
                None
            }
        };
    }
}

/// One primitive call.
async fn perform<P: Primitives + ?Sized>(
    p: &P,
    call: Call,
    deadline: Instant,
) -> Result<Reply, CloudError> {
    match call {
        Call::Describe => p.describe_eni(deadline).await.map(Reply::Described),
        Call::Attach { device_index } => p
            .attach(device_index, deadline)
            .await
            .map(|()| Reply::Accepted),
        Call::Detach {
            attachment_id,
            force,
        } => p
            .detach(&attachment_id, force, deadline)
            .await
            .map(|()| Reply::Accepted),
        Call::KeepOnTermination { attachment_id } => p
            .keep_on_termination(&attachment_id, deadline)
            .await
            .map(|()| Reply::Accepted),
    }
}

/// The claim, driven against `p`.
pub async fn run_claim<P: Primitives + ?Sized>(
    p: &P,
    req: ClaimRequest,
) -> Result<ClaimOutcome, CloudError> {
    run_claim_watching(p, req, ClaimHints::default())
        .await
        .result
}

/// The claim, driven against `p`, with the link watch raced against every call and wait: when
/// the link shows up, the machine's [`EarlyClaim`] goes out on the watch's channel at once, and
/// the claim goes on to its confirmation.
pub async fn run_claim_watching<P: Primitives + ?Sized>(
    p: &P,
    req: ClaimRequest,
    hints: ClaimHints<'_>,
) -> Watched {
    let mut m = ClaimProc::new(req, p.context()).with_poll(p.poll_schedule());
    if let Some(id) = hints.known_attachment {
        m = m.with_known_attachment(id);
    }
    let mut link = hints.link;
    let started = Instant::now();
    let deadline = started + p.context().limits.deadline;
    let mut last = None;
    loop {
        let step = match m.next(started.elapsed(), last.take()) {
            Next::Done(result) => {
                return Watched {
                    result,
                    calls: Some(m.calls()),
                }
            }
            Next::Call(call) => {
                futures::future::Either::Left(async move { Some(perform(p, call, deadline).await) })
            }
            Next::Wait(d) => futures::future::Either::Right(async move {
                tokio::time::sleep(d).await;
                None
            }),
        };
        tokio::pin!(step);
        last = loop {
            let Some(watch) = link.as_mut() else {
                break step.await;
            };
            tokio::select! {
                answer = &mut step => break answer,
                () = &mut watch.seen => {
                    // Seen once is enough: before the attach it is not ours to act on, after it
                    // the early claim goes out (once).
                    if let Some(watch) = link.take() {
                        if let Some(early) = m.link_seen() {
                            let _ = watch.early.send(early);
                        }
                    }
                }
            }
        };
    }
}

/// The release, driven against `p`.
pub async fn run_release<P: Primitives + ?Sized>(p: &P) -> Result<ReleaseOutcome, CloudError> {
    run(
        p,
        ReleaseProc::new(p.context()).with_poll(p.poll_schedule()),
    )
    .await
}

// ---------- pieces both procedures share ----------

/// Whether a wait for detachment may force the detach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forcing {
    /// Never (already forced, or not entitled, or releasing our own attachment).
    Never,
    /// After `force_detach_grace` from the start of the wait.
    AfterGrace,
}

/// A wait until the ENI is detached.
#[derive(Debug, Clone)]
struct DetachWait {
    /// The holder being detached, which may still show up; anyone else attaching ends the wait.
    expected: Option<InstanceId>,
    forcing: Forcing,
    /// When the wait started (the poll schedule counts from here).
    started: Duration,
}

/// What one look at the ENI says about a [`DetachWait`].
enum Seen {
    Gone,
    HeldBy(InstanceId),
    /// The grace is over: force-detach this attachment.
    Force(String),
    Pending,
}

impl DetachWait {
    fn new(expected: Option<InstanceId>, forcing: Forcing, started: Duration) -> Self {
        DetachWait {
            expected,
            forcing,
            started,
        }
    }

    fn see(&mut self, info: &EniInfo, ctx: &Context, elapsed: Duration) -> Seen {
        match &info.attachment {
            None => Seen::Gone,
            Some(a) if a.state == AttachState::Detached => Seen::Gone,
            Some(a)
                if self.expected.as_ref() != Some(&a.instance_id) && a.instance_id != ctx.me =>
            {
                match info.holder() {
                    Some(_) => Seen::HeldBy(a.instance_id.clone()),
                    None => Seen::Pending,
                }
            }
            Some(a) => {
                let grace = ctx.limits.force_detach_grace;
                if self.forcing == Forcing::AfterGrace
                    && elapsed.saturating_sub(self.started) >= grace
                {
                    warn!(holder = %a.instance_id, eni = %ctx.eni,
                        grace_ms = grace.as_millis() as u64,
                        "normal detach did not finish within the grace: forcing");
                    self.forcing = Forcing::Never;
                    Seen::Force(a.attachment_id.clone())
                } else {
                    Seen::Pending
                }
            }
        }
    }
}

/// The next poll of a wait that started at `since`, or the deadline error when it would end past
/// the deadline.
fn poll<T>(
    schedule: &PollSchedule,
    since: Duration,
    elapsed: Duration,
    ctx: &Context,
    what: &str,
) -> Result<Next<T>, CloudError> {
    let jitter = (ctx.limits.poll_jitter)().clamp(0.0, 1.0);
    let delay = schedule
        .delay(elapsed.saturating_sub(since))
        .mul_f64(0.8 + 0.2 * jitter);
    if elapsed + delay >= ctx.limits.deadline {
        return Err(CloudError::new(
            CloudErrorKind::Deadline,
            format!(
                "{what} of {} not finished within {} ms",
                ctx.eni,
                ctx.limits.deadline.as_millis()
            ),
        ));
    }
    Ok(Next::Wait(delay))
}

fn detach_call<T>(steps: &mut Vec<Step>, attachment_id: String, force: bool) -> Next<T> {
    steps.push(Step::now(if force {
        "force detach requested"
    } else {
        "detach requested"
    }));
    Next::Call(Call::Detach {
        attachment_id,
        force,
    })
}

/// The answer to a detach: an attachment that is already gone is the state we wanted.
fn detach_answer(
    steps: &mut Vec<Step>,
    last: Option<Result<Reply, CloudError>>,
) -> Result<(), CloudError> {
    match last {
        Some(Err(e)) if e.kind == CloudErrorKind::NotFound => {
            steps.push(Step::now("detach: attachment already gone"));
            Ok(())
        }
        last => {
            expect_accepted(last, "detach")?;
            steps.push(Step::now("detach accepted"));
            Ok(())
        }
    }
}

fn expect_info(last: Option<Result<Reply, CloudError>>) -> Result<EniInfo, CloudError> {
    match last {
        Some(Ok(Reply::Described(info))) => Ok(info),
        Some(Err(e)) => Err(e),
        other => Err(confused("describe", &other)),
    }
}

fn expect_accepted(last: Option<Result<Reply, CloudError>>, what: &str) -> Result<(), CloudError> {
    match last {
        Some(Ok(Reply::Accepted)) => Ok(()),
        Some(Err(e)) => Err(e),
        other => Err(confused(what, &other)),
    }
}

/// A driver answered something other than the call asked for: a bug in the driver, reported
/// rather than guessed around.
fn confused(what: &str, got: &Option<Result<Reply, CloudError>>) -> CloudError {
    let got = match got {
        None => "nothing",
        Some(Ok(Reply::Described(_))) => "a description",
        Some(Ok(Reply::Accepted)) => "an acceptance",
        Some(Err(_)) => "an error",
    };
    CloudError::new(
        CloudErrorKind::BadResponse,
        format!("procedure waited for the answer to {what} and got {got}"),
    )
}

impl CallCount {
    fn count(&mut self, call: &Call) {
        let n = match call {
            Call::Describe => &mut self.describe,
            Call::Attach { .. } => &mut self.attach,
            Call::Detach { .. } => &mut self.detach,
            Call::KeepOnTermination { .. } => &mut self.keep,
        };
        *n += 1;
    }
}

/// After a procedure is done, any further step is an error (and changes nothing).
fn finished() -> CloudError {
    CloudError::new(
        CloudErrorKind::BadResponse,
        "procedure asked to go on after it finished",
    )
}

// ---------- the claim ----------

#[derive(Debug, Clone)]
enum ClaimPhase {
    Start,
    /// Waiting for the first description.
    Described,
    /// Waiting for the answer to a forced detach of an attachment id known from the last look
    /// (no describe first); a failure means the id is stale, and the claim describes.
    DetachKnown(DetachWait),
    /// Waiting for a detach's answer; then describe at once, or poll first (a forced detach
    /// during a wait).
    Detach {
        wait: DetachWait,
        poll_first: bool,
    },
    /// Waiting for the ENI to be detached (a description, or the end of a poll delay).
    WaitDetached(DetachWait),
    Attach,
    /// The attach was refused as in use: waiting for a description that names the winner.
    AttachRefused {
        message: String,
    },
    WaitAttached {
        already_mine: bool,
        /// When the wait started (the poll schedule counts from here).
        since: Duration,
    },
    /// Waiting for the answer to clearing delete-on-termination.
    Keep {
        info: Box<EniInfo>,
        already_mine: bool,
    },
    Done,
}

/// The compare-and-swap claim. See the module documentation.
#[derive(Debug, Clone)]
pub struct ClaimProc {
    req: ClaimRequest,
    ctx: Context,
    schedule: PollSchedule,
    /// The expected holder's attachment id, when the caller knows it (used once, at the start).
    known_attachment: Option<String>,
    /// The subnet CIDRs from the first description (later polls may not carry them).
    cidr: Option<Ipv4Net>,
    cidr6: Option<Ipv6Net>,
    /// The last description, for an early claim.
    latest: Option<Box<EniInfo>>,
    /// The early claim went out: what follows is its confirmation.
    early: bool,
    calls: CallCount,
    steps: Vec<Step>,
    phase: ClaimPhase,
    /// Which of `req.device_indexes` the next attach uses.
    index_at: usize,
}

impl ClaimProc {
    pub fn new(req: ClaimRequest, ctx: Context) -> Self {
        ClaimProc {
            req,
            ctx,
            schedule: PollSchedule::default(),
            known_attachment: None,
            cidr: None,
            cidr6: None,
            latest: None,
            early: false,
            calls: CallCount::default(),
            steps: Vec::new(),
            phase: ClaimPhase::Start,
            index_at: 0,
        }
    }

    /// The device index the next attach uses (1 if the caller gave none).
    fn device_index(&self) -> u32 {
        self.req
            .device_indexes
            .get(self.index_at)
            .copied()
            .unwrap_or(1)
    }

    /// Polls on `schedule` instead of the default one.
    pub fn with_poll(mut self, schedule: PollSchedule) -> Self {
        self.schedule = schedule;
        self
    }

    /// The expected holder's attachment id from the last look: a forced claim detaches it at
    /// once, without describing first. Ignored by a claim that does not force.
    pub fn with_known_attachment(mut self, attachment_id: String) -> Self {
        self.known_attachment = Some(attachment_id);
        self
    }

    /// The calls asked for so far.
    pub fn calls(&self) -> CallCount {
        self.calls
    }

    /// The ENI's link is on this host. After this claim asked for the attach (its answer may
    /// still be on its way) that is the attachment done: the early claim, with the steps so far,
    /// for the host to act on; the machine goes on until the API confirms. `None` when the link
    /// is not this claim's to act on (seen before the attach, or the claim has ended) or the
    /// early claim went out already.
    pub fn link_seen(&mut self) -> Option<EarlyClaim> {
        let attaching = matches!(
            self.phase,
            ClaimPhase::Attach
                | ClaimPhase::WaitAttached {
                    already_mine: false,
                    ..
                }
        );
        if !attaching || self.early {
            return None;
        }
        let mut info = *self.latest.clone()?;
        self.early = true;
        self.steps.push(Step::mark(Mark::LinkSeen, Instant::now()));
        self.fill_cidrs(&mut info);
        let me = &self.ctx.me;
        info.attachment = info.attachment.filter(|a| a.instance_id == *me);
        info!(eni = %self.ctx.eni, "the ENI's link is here: acting on it, the API's `attached` is confirmed in the background");
        Some(EarlyClaim {
            info,
            steps: std::mem::take(&mut self.steps),
        })
    }

    fn fill_cidrs(&self, info: &mut EniInfo) {
        info.subnet_cidr = info.subnet_cidr.or(self.cidr);
        if let Some(v6) = info.ipv6.as_mut() {
            v6.subnet_cidr = v6.subnet_cidr.or(self.cidr6);
        }
    }

    fn mark(&mut self, label: impl Into<String>) {
        self.steps.push(Step::now(label));
    }

    fn held_by(&mut self, holder: InstanceId) -> Next<ClaimOutcome> {
        Next::Done(Ok(ClaimOutcome::HeldBy {
            holder,
            steps: std::mem::take(&mut self.steps),
        }))
    }

    /// The description a call brought back, remembered for an early claim.
    fn look(&mut self, last: Option<Result<Reply, CloudError>>) -> Result<EniInfo, CloudError> {
        let info = expect_info(last)?;
        self.cidr = self.cidr.or(info.subnet_cidr);
        self.cidr6 = self
            .cidr6
            .or(info.ipv6.as_ref().and_then(|v6| v6.subnet_cidr));
        self.latest = Some(Box::new(info.clone()));
        Ok(info)
    }

    fn step(
        &mut self,
        elapsed: Duration,
        last: Option<Result<Reply, CloudError>>,
    ) -> Result<Next<ClaimOutcome>, CloudError> {
        match std::mem::replace(&mut self.phase, ClaimPhase::Done) {
            ClaimPhase::Start => Ok(self.start(elapsed)),
            ClaimPhase::Described => {
                let info = self.look(last)?;
                self.mark("described");
                self.decide(info, elapsed)
            }
            ClaimPhase::DetachKnown(mut wait) => match last {
                Some(Ok(Reply::Accepted)) => {
                    self.mark("detach accepted");
                    wait.started = elapsed;
                    self.phase = ClaimPhase::WaitDetached(wait);
                    Ok(Next::Call(Call::Describe))
                }
                Some(Err(e)) => {
                    info!(error = %e, eni = %self.ctx.eni, "the attachment id from the last look is stale: describing");
                    Ok(self.describe_first("attachment id stale: describe requested"))
                }
                other => Err(confused("detach", &other)),
            },
            ClaimPhase::Detach {
                mut wait,
                poll_first,
            } => {
                detach_answer(&mut self.steps, last)?;
                if poll_first {
                    let next = poll(&self.schedule, wait.started, elapsed, &self.ctx, "detach")?;
                    self.phase = ClaimPhase::WaitDetached(wait);
                    return Ok(next);
                }
                wait.started = elapsed;
                self.phase = ClaimPhase::WaitDetached(wait);
                Ok(Next::Call(Call::Describe))
            }
            ClaimPhase::WaitDetached(wait) => self.wait_detached(wait, elapsed, last),
            ClaimPhase::Attach => self.attach_answer(last, elapsed),
            ClaimPhase::AttachRefused { message } => {
                let info = self.look(last)?;
                match info.attachment {
                    // An earlier attempt whose answer was lost did attach: carry on.
                    Some(a) if a.instance_id == self.ctx.me => {
                        self.mark("attach accepted");
                        Ok(self.wait_attached(false, elapsed))
                    }
                    Some(a) => {
                        info!(holder = %a.instance_id, eni = %self.ctx.eni, "lost the race for the ENI");
                        Ok(self.held_by(a.instance_id))
                    }
                    None => Err(CloudError::new(
                        CloudErrorKind::Contended,
                        format!("{}: {message} but no other holder is visible", self.ctx.eni),
                    )),
                }
            }
            ClaimPhase::WaitAttached {
                already_mine,
                since,
            } => self.attached(already_mine, since, elapsed, last),
            ClaimPhase::Keep {
                mut info,
                already_mine,
            } => {
                expect_accepted(last, "keep-on-termination")?;
                if let Some(a) = info.attachment.as_mut() {
                    a.delete_on_termination = false;
                }
                self.mark("delete-on-termination cleared");
                Ok(self.claimed(*info, already_mine))
            }
            ClaimPhase::Done => Err(finished()),
        }
    }

    /// The first call: a forced detach of the attachment the caller knows, or a describe.
    fn start(&mut self, elapsed: Duration) -> Next<ClaimOutcome> {
        let known = self.known_attachment.take().filter(|_| self.req.force);
        let (Some(holder), Some(attachment_id)) = (self.req.expected_holder.clone(), known) else {
            return self.describe_first("describe requested");
        };
        warn!(holder = %holder, eni = %self.ctx.eni, attachment = %attachment_id,
            "holder believed dead: detaching with Force=true the attachment from the last look");
        self.phase =
            ClaimPhase::DetachKnown(DetachWait::new(Some(holder), Forcing::Never, elapsed));
        detach_call(&mut self.steps, attachment_id, true)
    }

    fn describe_first(&mut self, label: &'static str) -> Next<ClaimOutcome> {
        self.mark(label);
        self.phase = ClaimPhase::Described;
        Next::Call(Call::Describe)
    }

    /// The first look: adopt, detach the expected holder, wait out a pending detach, or attach.
    fn decide(
        &mut self,
        info: EniInfo,
        elapsed: Duration,
    ) -> Result<Next<ClaimOutcome>, CloudError> {
        let me = &self.ctx.me;
        let eni = &self.ctx.eni;
        let Some(a) = info.attachment.clone() else {
            return Ok(self.attach());
        };
        match a.state {
            AttachState::Attached if a.instance_id == *me => Ok(self.keep(info, true)),
            AttachState::Attaching if a.instance_id == *me => Ok(self.wait_attached(true, elapsed)),
            AttachState::Attached | AttachState::Attaching => {
                if self.req.expected_holder.as_ref() != Some(&a.instance_id) {
                    info!(holder = %a.instance_id, expected = ?self.req.expected_holder.as_ref().map(|i| i.as_str()),
                        eni = %eni, "claim stopped: held by an unexpected instance");
                    return Ok(self.held_by(a.instance_id));
                }
                let force = self.req.force;
                if force {
                    warn!(holder = %a.instance_id, eni = %eni,
                        "holder believed dead: detaching with Force=true");
                } else {
                    info!(holder = %a.instance_id, eni = %eni, "detaching from the peer");
                }
                let forcing = if force {
                    Forcing::Never
                } else {
                    Forcing::AfterGrace
                };
                let wait = DetachWait::new(Some(a.instance_id), forcing, elapsed);
                self.phase = ClaimPhase::Detach {
                    wait,
                    poll_first: false,
                };
                Ok(detach_call(&mut self.steps, a.attachment_id, force))
            }
            AttachState::Detaching => {
                // Someone (maybe this node, earlier) is detaching it: wait, forcing only if the
                // caller is entitled to replace that instance.
                let entitled = self.req.expected_holder.as_ref() == Some(&a.instance_id)
                    || a.instance_id == *me;
                let expected = entitled.then(|| a.instance_id.clone());
                if entitled && self.req.force {
                    warn!(holder = %a.instance_id, eni = %eni,
                        "holder believed dead and its detach is pending: forcing");
                    self.phase = ClaimPhase::Detach {
                        wait: DetachWait::new(expected, Forcing::Never, elapsed),
                        poll_first: false,
                    };
                    return Ok(detach_call(&mut self.steps, a.attachment_id, true));
                }
                let forcing = if entitled {
                    Forcing::AfterGrace
                } else {
                    Forcing::Never
                };
                self.phase = ClaimPhase::WaitDetached(DetachWait::new(expected, forcing, elapsed));
                Ok(Next::Call(Call::Describe))
            }
            AttachState::Detached => Ok(self.attach()),
        }
    }

    fn wait_detached(
        &mut self,
        mut wait: DetachWait,
        elapsed: Duration,
        last: Option<Result<Reply, CloudError>>,
    ) -> Result<Next<ClaimOutcome>, CloudError> {
        if last.is_none() {
            self.phase = ClaimPhase::WaitDetached(wait);
            return Ok(Next::Call(Call::Describe));
        }
        let info = self.look(last)?;
        match wait.see(&info, &self.ctx, elapsed) {
            Seen::Gone => {
                self.mark("detached");
                Ok(self.attach())
            }
            Seen::HeldBy(holder) => Ok(self.held_by(holder)),
            Seen::Force(id) => {
                self.phase = ClaimPhase::Detach {
                    wait,
                    poll_first: true,
                };
                Ok(detach_call(&mut self.steps, id, true))
            }
            Seen::Pending => {
                let next = poll(&self.schedule, wait.started, elapsed, &self.ctx, "detach")?;
                self.phase = ClaimPhase::WaitDetached(wait);
                Ok(next)
            }
        }
    }

    fn attach(&mut self) -> Next<ClaimOutcome> {
        self.mark("attach requested");
        self.phase = ClaimPhase::Attach;
        Next::Call(Call::Attach {
            device_index: self.device_index(),
        })
    }

    fn attach_answer(
        &mut self,
        last: Option<Result<Reply, CloudError>>,
        elapsed: Duration,
    ) -> Result<Next<ClaimOutcome>, CloudError> {
        match last {
            Some(Err(e)) if e.kind == CloudErrorKind::InUse => {
                // A lost race: name the winner from a fresh look.
                self.mark("attach refused: in use");
                self.phase = ClaimPhase::AttachRefused { message: e.message };
                Ok(Next::Call(Call::Describe))
            }
            Some(Err(e)) if e.kind == CloudErrorKind::InvalidParameter => {
                let refused = self.device_index();
                if self.index_at + 1 < self.req.device_indexes.len() {
                    // After a forced detach AWS may refuse the old index on this instance
                    // until it is stopped and started: the next index in the list may do.
                    self.index_at += 1;
                    let next = self.device_index();
                    warn!(eni = %self.ctx.eni, refused, next, error = %e.message,
                        "attach refused at this device index; trying the next");
                    self.mark(format!(
                        "attach refused at device index {refused}; trying {next}"
                    ));
                    return Ok(self.attach());
                }
                Err(CloudError::new(
                    CloudErrorKind::InvalidParameter,
                    format!(
                        "attach {} to {} refused at every device index tried ({:?}), last: {} \
                         (are other interfaces at those indexes? after a forced detach the \
                         instance may need a stop and start)",
                        self.ctx.eni, self.ctx.me, self.req.device_indexes, e.message
                    ),
                ))
            }
            last => {
                expect_accepted(last, "attach")?;
                self.mark("attach accepted");
                Ok(self.wait_attached(false, elapsed))
            }
        }
    }

    fn wait_attached(&mut self, already_mine: bool, since: Duration) -> Next<ClaimOutcome> {
        self.phase = ClaimPhase::WaitAttached {
            already_mine,
            since,
        };
        Next::Call(Call::Describe)
    }

    /// One look while waiting for `attached`.
    fn attached(
        &mut self,
        already_mine: bool,
        since: Duration,
        elapsed: Duration,
        last: Option<Result<Reply, CloudError>>,
    ) -> Result<Next<ClaimOutcome>, CloudError> {
        if last.is_none() {
            return Ok(self.wait_attached(already_mine, since));
        }
        let mut info = self.look(last)?;
        if let Some(a) = &info.attachment {
            if a.instance_id != self.ctx.me {
                if info.holder().is_some() {
                    let holder = a.instance_id.clone();
                    return Ok(self.held_by(holder));
                }
            } else if a.state == AttachState::Attached {
                self.mark("attached");
                self.fill_cidrs(&mut info);
                let device_index = self.device_index();
                info!(eni = %self.ctx.eni, device_index, early = self.early, "ENI attached here");
                return Ok(self.keep(info, already_mine));
            } else if matches!(a.state, AttachState::Detaching | AttachState::Detached) {
                return Err(CloudError::new(
                    CloudErrorKind::DetachedMeanwhile,
                    format!(
                        "{} was detached from this instance while attaching",
                        self.ctx.eni
                    ),
                ));
            }
        }
        let next = poll(&self.schedule, since, elapsed, &self.ctx, "attach")?;
        self.phase = ClaimPhase::WaitAttached {
            already_mine,
            since,
        };
        Ok(next)
    }

    /// Makes sure terminating this instance does not delete the ENI, then reports the claim.
    fn keep(&mut self, info: EniInfo, already_mine: bool) -> Next<ClaimOutcome> {
        match info.attachment.as_ref() {
            Some(a) if a.delete_on_termination => {
                self.mark("delete-on-termination clear requested");
                let attachment_id = a.attachment_id.clone();
                self.phase = ClaimPhase::Keep {
                    info: Box::new(info),
                    already_mine,
                };
                Next::Call(Call::KeepOnTermination { attachment_id })
            }
            _ => self.claimed(info, already_mine),
        }
    }

    fn claimed(&mut self, info: EniInfo, already_mine: bool) -> Next<ClaimOutcome> {
        Next::Done(Ok(ClaimOutcome::Claimed {
            info,
            already_mine,
            steps: std::mem::take(&mut self.steps),
        }))
    }
}

impl Procedure for ClaimProc {
    type Output = ClaimOutcome;

    fn next(
        &mut self,
        elapsed: Duration,
        last: Option<Result<Reply, CloudError>>,
    ) -> Next<ClaimOutcome> {
        match self.step(elapsed, last) {
            Ok(next) => {
                match &next {
                    Next::Done(_) => self.phase = ClaimPhase::Done,
                    Next::Call(call) => self.calls.count(call),
                    Next::Wait(_) => {}
                }
                next
            }
            Err(e) => {
                self.phase = ClaimPhase::Done;
                Next::Done(Err(e))
            }
        }
    }
}

// ---------- the release ----------

#[derive(Debug, Clone)]
enum ReleasePhase {
    Start,
    Described,
    Detach(DetachWait),
    WaitDetached(DetachWait),
    Done,
}

/// Detaching this instance's own attachment. Never forces: this instance is alive and
/// detaching itself.
#[derive(Debug, Clone)]
pub struct ReleaseProc {
    ctx: Context,
    schedule: PollSchedule,
    steps: Vec<Step>,
    phase: ReleasePhase,
}

impl ReleaseProc {
    pub fn new(ctx: Context) -> Self {
        ReleaseProc {
            ctx,
            schedule: PollSchedule::default(),
            steps: Vec::new(),
            phase: ReleasePhase::Start,
        }
    }

    /// Polls on `schedule` instead of the default one.
    pub fn with_poll(mut self, schedule: PollSchedule) -> Self {
        self.schedule = schedule;
        self
    }

    fn done(&mut self, detached: bool) -> Next<ReleaseOutcome> {
        Next::Done(Ok(ReleaseOutcome {
            detached,
            steps: std::mem::take(&mut self.steps),
        }))
    }

    fn step(
        &mut self,
        elapsed: Duration,
        last: Option<Result<Reply, CloudError>>,
    ) -> Result<Next<ReleaseOutcome>, CloudError> {
        match std::mem::replace(&mut self.phase, ReleasePhase::Done) {
            ReleasePhase::Start => {
                self.steps.push(Step::now("describe requested"));
                self.phase = ReleasePhase::Described;
                Ok(Next::Call(Call::Describe))
            }
            ReleasePhase::Described => {
                let info = expect_info(last)?;
                self.steps.push(Step::now("described"));
                let me = self.ctx.me.clone();
                let Some(a) = info
                    .attachment
                    .filter(|a| a.instance_id == me && a.state != AttachState::Detached)
                else {
                    return Ok(self.done(false));
                };
                let wait = DetachWait::new(Some(me), Forcing::Never, elapsed);
                if a.state == AttachState::Detaching {
                    self.phase = ReleasePhase::WaitDetached(wait);
                    return Ok(Next::Call(Call::Describe));
                }
                self.phase = ReleasePhase::Detach(wait);
                Ok(detach_call(&mut self.steps, a.attachment_id, false))
            }
            ReleasePhase::Detach(mut wait) => {
                detach_answer(&mut self.steps, last)?;
                wait.started = elapsed;
                self.phase = ReleasePhase::WaitDetached(wait);
                Ok(Next::Call(Call::Describe))
            }
            ReleasePhase::WaitDetached(mut wait) => {
                if last.is_none() {
                    self.phase = ReleasePhase::WaitDetached(wait);
                    return Ok(Next::Call(Call::Describe));
                }
                let info = expect_info(last)?;
                match wait.see(&info, &self.ctx, elapsed) {
                    Seen::Gone => {
                        self.steps.push(Step::now("detached"));
                        info!(eni = %self.ctx.eni, "ENI released");
                        Ok(self.done(true))
                    }
                    Seen::HeldBy(holder) => Err(CloudError::new(
                        CloudErrorKind::Contended,
                        format!("{} was attached to {holder} while releasing", self.ctx.eni),
                    )),
                    // Releasing waits with Forcing::Never, so no look asks for force.
                    Seen::Force(_) | Seen::Pending => {
                        let next =
                            poll(&self.schedule, wait.started, elapsed, &self.ctx, "detach")?;
                        self.phase = ReleasePhase::WaitDetached(wait);
                        Ok(next)
                    }
                }
            }
            ReleasePhase::Done => Err(finished()),
        }
    }
}

impl Procedure for ReleaseProc {
    type Output = ReleaseOutcome;

    fn next(
        &mut self,
        elapsed: Duration,
        last: Option<Result<Reply, CloudError>>,
    ) -> Next<ReleaseOutcome> {
        match self.step(elapsed, last) {
            Ok(next) => {
                if matches!(next, Next::Done(_)) {
                    self.phase = ReleasePhase::Done;
                }
                next
            }
            Err(e) => {
                self.phase = ReleasePhase::Done;
                Next::Done(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests;
