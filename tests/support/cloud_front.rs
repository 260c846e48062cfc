//! A small EC2 "cloud front": an HTTP proxy in front of moto that adds the AWS behaviour moto
//! lacks, plus fault injection, for tests and the lab.
//!
//! - Single attachment: attaching an ENI that is attached (or detaching) fails with
//!   `InvalidNetworkInterface.InUse`; attaching at a device index the instance already uses fails
//!   with `InvalidParameterValue`. Decisions are serialized, so two racing attaches cannot both win.
//! - Asynchronous transitions: with [`FrontControl::set_delays`], an attach is visible as
//!   `attaching` and a detach as `detaching` for the configured time. Detaches are held back
//!   (moto is told later), attaches are forwarded at once and masked in DescribeNetworkInterfaces.
//!   `Force=true` completes a pending detach at once.
//! - DeleteOnTermination: moto ignores changes to it; the front remembers them per attachment
//!   ([`FrontControl::set_delete_on_termination`] seeds one) and shows them in describes.
//! - Faults: [`FrontControl::inject`] makes the next N matching requests fail with a throttle
//!   (503 `RequestLimitExceeded`), a 500 `InternalError`, or hang without an answer.
//! - A call log with timestamps ([`FrontControl::calls`]).
//!
//! It speaks just enough HTTP/1.1 for the AWS SDK (Content-Length bodies, keep-alive) and talks
//! to moto with one connection per request. It is plain library code with no test macros, so a
//! lab binary can include it with `#[path = "../tests/support/cloud_front.rs"] mod cloud_front;`.
//! It uses only tokio and xmlparser.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A fault the front can inject instead of answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 503 `RequestLimitExceeded`, as EC2 throttles.
    Throttle,
    /// HTTP 500 `InternalError`.
    ServerError,
    /// No answer: the request is held until the client gives up (or a minute passes).
    Hang,
}

/// One request the front saw.
#[derive(Debug, Clone)]
pub struct CallRecord {
    /// When the request arrived.
    pub at: Instant,
    /// When the front answered (or gave up on a hang).
    pub done: Instant,
    pub action: String,
    pub params: BTreeMap<String, String>,
    pub status: u16,
    /// Set when the answer was an injected fault.
    pub fault: Option<Fault>,
    /// What the front decided: "forwarded", "in-use", "device-index", "detach-pending", ...
    pub outcome: &'static str,
}

#[derive(Debug, Clone)]
struct FaultRule {
    /// `None` matches every action.
    action: Option<String>,
    fault: Fault,
    remaining: usize,
}

#[derive(Debug, Clone)]
struct PendingDetach {
    attachment_id: String,
    until: Instant,
}

#[derive(Debug, Default)]
struct State {
    faults: Vec<FaultRule>,
    calls: Vec<CallRecord>,
    attach_delay: Duration,
    detach_delay: Duration,
    /// ENI id -> when its attach completes.
    attaching: HashMap<String, Instant>,
    /// ENI id -> the detach moto has not been told about yet.
    detaching: HashMap<String, PendingDetach>,
    /// Attachment id -> DeleteOnTermination as last set.
    delete_on_termination: HashMap<String, bool>,
    /// With [`FrontControl::refuse_index_after_forced_detach`]: (instance, device index) pairs a
    /// forced detach freed, refused until the instance is stopped and started (never here).
    forced_free: Option<Vec<(String, u32)>>,
}

/// An attachment change as the instance would see it: the ENI arrived (`attached`) or left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub eni: String,
    pub instance: String,
    pub attached: bool,
}

type ChangeHook = Arc<dyn Fn(Change) + Send + Sync>;

struct Shared {
    upstream: SocketAddr,
    /// Told when an attach or detach completes: the lab hot-plugs the ENI's link from here.
    on_change: Mutex<Option<ChangeHook>>,
    state: Mutex<State>,
    /// Serializes attach/detach decisions against moto's state, so a race has one winner.
    decide: tokio::sync::Mutex<()>,
}

/// The control handle: configure faults and delays, read the call log. Cheap to clone.
#[derive(Clone)]
pub struct FrontControl {
    shared: Arc<Shared>,
}

/// A running front; stops when dropped.
pub struct CloudFront {
    addr: SocketAddr,
    control: FrontControl,
    task: JoinHandle<()>,
}

impl Drop for CloudFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CloudFront {
    /// Starts the front on `listen` (port 0 picks a free one) in front of moto at `upstream`.
    /// Must be called inside a tokio runtime.
    pub async fn start(listen: SocketAddr, upstream: SocketAddr) -> io::Result<CloudFront> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            on_change: Mutex::new(None),
            upstream,
            state: Mutex::new(State::default()),
            decide: tokio::sync::Mutex::new(()),
        });
        let control = FrontControl {
            shared: shared.clone(),
        };
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    // A broken connection only ends that connection.
                    let _ = serve_connection(shared, stream).await;
                });
            }
        });
        Ok(CloudFront {
            addr,
            control,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL to configure as the EC2 endpoint.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn control(&self) -> FrontControl {
        self.control.clone()
    }
}

impl FrontControl {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The next `count` requests for `action` (any action when `None`) get `fault`.
    pub fn inject(&self, action: Option<&str>, fault: Fault, count: usize) {
        self.state().faults.push(FaultRule {
            action: action.map(str::to_owned),
            fault,
            remaining: count,
        });
    }

    pub fn clear_faults(&self) {
        self.state().faults.clear();
    }

    /// From now on, as AWS may: after a forced detach the instance cannot attach an interface
    /// at that device index again (`InvalidParameterValue`) until it is stopped and started,
    /// which never happens in the lab.
    pub fn refuse_index_after_forced_detach(&self) {
        self.state().forced_free.get_or_insert_with(Vec::new);
    }

    /// Calls `f` whenever an attach or a detach completes (after the configured delays).
    pub fn on_change(&self, f: impl Fn(Change) + Send + Sync + 'static) {
        *self
            .shared
            .on_change
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(f));
    }

    /// How long attaches stay `attaching` and detaches `detaching`; zero is moto's instant.
    pub fn set_delays(&self, attach: Duration, detach: Duration) {
        let mut st = self.state();
        st.attach_delay = attach;
        st.detach_delay = detach;
    }

    /// Makes the front report (and remember) DeleteOnTermination for an attachment, e.g. to
    /// stand for an ENI created at launch (where it is true).
    pub fn set_delete_on_termination(&self, attachment_id: &str, value: bool) {
        self.state()
            .delete_on_termination
            .insert(attachment_id.to_owned(), value);
    }

    pub fn calls(&self) -> Vec<CallRecord> {
        self.state().calls.clone()
    }

    pub fn clear_calls(&self) {
        self.state().calls.clear();
    }

    /// Number of logged requests for `action`.
    pub fn count(&self, action: &str) -> usize {
        self.state()
            .calls
            .iter()
            .filter(|c| c.action == action)
            .count()
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone)]
struct Response {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Response {
    fn xml(status: u16, body: String) -> Self {
        Response {
            status,
            content_type: "text/xml;charset=UTF-8".into(),
            body: body.into_bytes(),
        }
    }
}

async fn read_head<R: AsyncBufReadExt + Unpin>(r: &mut R) -> io::Result<Option<Vec<String>>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return if lines.is_empty() {
                Ok(None)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "truncated head",
                ))
            };
        }
        let line = line.trim_end_matches(['\r', '\n']).to_owned();
        if line.is_empty() {
            if lines.is_empty() {
                continue; // stray CRLF between requests
            }
            return Ok(Some(lines));
        }
        lines.push(line);
        if lines.len() > 200 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too long"));
        }
    }
}

fn parse_headers(lines: &[String]) -> Vec<(String, String)> {
    lines
        .iter()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

async fn read_request<R: AsyncBufReadExt + Unpin>(r: &mut R) -> io::Result<Option<Request>> {
    let Some(lines) = read_head(r).await? else {
        return Ok(None);
    };
    let mut first = lines[0].split_whitespace();
    let method = first.next().unwrap_or_default().to_owned();
    let path = first.next().unwrap_or("/").to_owned();
    let headers = parse_headers(&lines[1..]);
    let mut req = Request {
        method,
        path,
        headers,
        body: Vec::new(),
    };
    if req
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        req.body = read_chunked(r).await?;
    } else {
        let len: usize = req
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if len > 16 << 20 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "body too large"));
        }
        req.body = vec![0; len];
        r.read_exact(&mut req.body).await?;
    }
    Ok(Some(req))
}

async fn read_chunked<R: AsyncBufReadExt + Unpin>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).await?;
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
        if size == 0 {
            // Trailers end with an empty line.
            loop {
                let mut t = String::new();
                if r.read_line(&mut t).await? == 0 || t.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..]).await?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf).await?;
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        412 => "Precondition Failed",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

async fn write_response(w: &mut TcpStream, resp: &Response) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nx-amzn-requestid: front\r\n\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len()
    );
    w.write_all(head.as_bytes()).await?;
    w.write_all(&resp.body).await?;
    w.flush().await
}

async fn serve_connection(shared: Arc<Shared>, stream: TcpStream) -> io::Result<()> {
    let mut reader = BufReader::new(stream);
    while let Some(req) = read_request(&mut reader).await? {
        let close = req
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        match handle(&shared, &req).await {
            Some(resp) => write_response(reader.get_mut(), &resp).await?,
            None => {
                // A hang: wait for the client to give up and close, then drop the connection.
                let mut buf = [0u8; 256];
                let _ = tokio::time::timeout(Duration::from_secs(60), async {
                    while reader.get_mut().read(&mut buf).await.unwrap_or(0) > 0 {}
                })
                .await;
                return Ok(());
            }
        }
        if close {
            break;
        }
    }
    Ok(())
}

/// Sends one request to moto on a fresh connection and reads the whole answer.
async fn forward(upstream: SocketAddr, req: &Request) -> io::Result<Response> {
    let mut s = TcpStream::connect(upstream).await?;
    let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.path);
    for (k, v) in &req.headers {
        if [
            "connection",
            "content-length",
            "transfer-encoding",
            "expect",
        ]
        .iter()
        .any(|h| k.eq_ignore_ascii_case(h))
        {
            continue;
        }
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        req.body.len()
    ));
    s.write_all(head.as_bytes()).await?;
    s.write_all(&req.body).await?;
    let mut r = BufReader::new(s);
    let lines = read_head(&mut r)
        .await?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no answer from moto"))?;
    let status: u16 = lines[0]
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad status line"))?;
    let headers = parse_headers(&lines[1..]);
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let body = if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        read_chunked(&mut r).await?
    } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        let mut b = vec![0; len];
        r.read_exact(&mut b).await?;
        b
    } else {
        let mut b = Vec::new();
        r.read_to_end(&mut b).await?;
        b
    };
    Ok(Response {
        status,
        content_type: get("content-type").unwrap_or_else(|| "text/xml".into()),
        body,
    })
}

// ---------------------------------------------------------------------------------------------
// EC2 semantics

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses an `application/x-www-form-urlencoded` Query-API body.
pub fn parse_form(body: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// An EC2 error in AWS's XML format.
pub fn ec2_error(status: u16, code: &str, message: &str) -> (u16, String) {
    (
        status,
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}\
             </Code><Message>{message}</Message></Error></Errors><RequestID>front-error\
             </RequestID></Response>"
        ),
    )
}

fn error_response(status: u16, code: &str, message: &str) -> Response {
    let (status, body) = ec2_error(status, code, message);
    Response::xml(status, body)
}

/// A minimal XML tree with the byte range of each element's text, so answers can be edited in
/// place without re-serializing them.
#[derive(Debug, Clone, Default)]
pub struct XmlElement {
    pub name: String,
    pub children: Vec<XmlElement>,
    pub text: String,
    pub text_span: Option<Range<usize>>,
}

impl XmlElement {
    pub fn child(&self, name: &str) -> Option<&XmlElement> {
        self.children.iter().find(|c| c.name == name)
    }

    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.as_str())
    }

    /// Every descendant (depth first) with this name.
    pub fn descendants<'a>(&'a self, name: &str, out: &mut Vec<&'a XmlElement>) {
        for c in &self.children {
            if c.name == name {
                out.push(c);
            }
            c.descendants(name, out);
        }
    }
}

/// Parses XML into an [`XmlElement`] tree (namespaces dropped, entities left as written).
pub fn parse_xml(xml: &str) -> Option<XmlElement> {
    let mut stack: Vec<XmlElement> = vec![XmlElement::default()];
    for token in xmlparser::Tokenizer::from(xml) {
        match token.ok()? {
            xmlparser::Token::ElementStart { local, .. } => stack.push(XmlElement {
                name: local.as_str().to_owned(),
                ..Default::default()
            }),
            xmlparser::Token::ElementEnd { end, .. } => match end {
                xmlparser::ElementEnd::Open => {}
                xmlparser::ElementEnd::Close(..) | xmlparser::ElementEnd::Empty => {
                    let el = stack.pop()?;
                    stack.last_mut()?.children.push(el);
                }
            },
            xmlparser::Token::Text { text } => {
                let top = stack.last_mut()?;
                top.text.push_str(text.as_str());
                top.text_span = Some(text.range());
            }
            _ => {}
        }
    }
    let mut root = stack.pop()?;
    root.children.pop()
}

/// What the front needs to know about one ENI in moto.
#[derive(Debug, Clone)]
struct EniView {
    id: String,
    attachment_id: Option<String>,
    instance_id: Option<String>,
    device_index: Option<u32>,
}

fn eni_views(doc: &XmlElement) -> Vec<EniView> {
    let Some(set) = doc.child("networkInterfaceSet") else {
        return Vec::new();
    };
    set.children
        .iter()
        .filter(|i| i.name == "item")
        .map(|item| {
            let att = item.child("attachment");
            EniView {
                id: item
                    .child_text("networkInterfaceId")
                    .unwrap_or_default()
                    .to_owned(),
                attachment_id: att
                    .and_then(|a| a.child_text("attachmentId"))
                    .map(str::to_owned),
                instance_id: att
                    .and_then(|a| a.child_text("instanceId"))
                    .map(str::to_owned),
                device_index: att
                    .and_then(|a| a.child_text("deviceIndex"))
                    .and_then(|d| d.parse().ok()),
            }
        })
        .collect()
}

/// Asks moto for every ENI, signed like the client's request (moto reads the Region from it).
async fn moto_enis(shared: &Shared, like: &Request) -> io::Result<Vec<EniView>> {
    let mut req = like.clone();
    req.body = b"Action=DescribeNetworkInterfaces&Version=2016-11-15".to_vec();
    let resp = forward(shared.upstream, &req).await?;
    let text = String::from_utf8_lossy(&resp.body);
    let doc = parse_xml(&text)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "moto answered non-XML"))?;
    Ok(eni_views(&doc))
}

fn take_fault(st: &mut State, action: &str) -> Option<Fault> {
    let rule = st
        .faults
        .iter_mut()
        .find(|r| r.remaining > 0 && r.action.as_deref().is_none_or(|a| a == action))?;
    rule.remaining -= 1;
    Some(rule.fault)
}

fn fault_response(fault: Fault) -> Option<Response> {
    match fault {
        Fault::Throttle => Some(error_response(
            503,
            "RequestLimitExceeded",
            "Request limit exceeded.",
        )),
        Fault::ServerError => Some(error_response(
            500,
            "InternalError",
            "An internal error has occurred.",
        )),
        Fault::Hang => None,
    }
}

async fn handle(shared: &Arc<Shared>, req: &Request) -> Option<Response> {
    let at = Instant::now();
    let params = parse_form(&req.body);
    let action = params.get("Action").cloned().unwrap_or_default();
    let fault = {
        let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        take_fault(&mut st, &action)
    };
    let (resp, outcome) = match fault {
        Some(f) => (fault_response(f), "fault"),
        None => {
            let (r, o) = match ec2(shared, req, &params, &action).await {
                Ok(x) => x,
                Err(e) => (
                    error_response(502, "FrontUpstreamError", &format!("moto: {e}")),
                    "upstream-error",
                ),
            };
            (Some(r), o)
        }
    };
    let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    st.calls.push(CallRecord {
        at,
        done: Instant::now(),
        action,
        params,
        status: resp.as_ref().map(|r| r.status).unwrap_or(0),
        fault,
        outcome,
    });
    resp
}

fn is_dry_run(params: &BTreeMap<String, String>) -> bool {
    params
        .get("DryRun")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

async fn ec2(
    shared: &Arc<Shared>,
    req: &Request,
    params: &BTreeMap<String, String>,
    action: &str,
) -> io::Result<(Response, &'static str)> {
    if is_dry_run(params) {
        return Ok((forward(shared.upstream, req).await?, "forwarded"));
    }
    match action {
        "AttachNetworkInterface" => attach(shared, req, params).await,
        "DetachNetworkInterface" => detach(shared, req, params).await,
        "DescribeNetworkInterfaces" => {
            let resp = forward(shared.upstream, req).await?;
            Ok((overlay_describe(shared, resp), "forwarded"))
        }
        "DescribeSubnets" => {
            let resp = forward(shared.upstream, req).await?;
            Ok((fix_cidr_block_states(resp), "forwarded"))
        }
        "ModifyNetworkInterfaceAttribute" => {
            let resp = forward(shared.upstream, req).await?;
            if resp.status == 200 {
                if let (Some(id), Some(dot)) = (
                    params.get("Attachment.AttachmentId"),
                    params.get("Attachment.DeleteOnTermination"),
                ) {
                    let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
                    st.delete_on_termination
                        .insert(id.clone(), dot.eq_ignore_ascii_case("true"));
                }
            }
            Ok((resp, "forwarded"))
        }
        _ => Ok((forward(shared.upstream, req).await?, "forwarded")),
    }
}

async fn attach(
    shared: &Arc<Shared>,
    req: &Request,
    params: &BTreeMap<String, String>,
) -> io::Result<(Response, &'static str)> {
    let eni = params
        .get("NetworkInterfaceId")
        .cloned()
        .unwrap_or_default();
    let instance = params.get("InstanceId").cloned().unwrap_or_default();
    let index: Option<u32> = params.get("DeviceIndex").and_then(|d| d.parse().ok());
    let _decide = shared.decide.lock().await;
    let enis = moto_enis(shared, req).await?;
    if enis
        .iter()
        .any(|e| e.id == eni && e.attachment_id.is_some())
    {
        return Ok((
            error_response(
                400,
                "InvalidNetworkInterface.InUse",
                &format!("Interface: [{eni}] in use."),
            ),
            "in-use",
        ));
    }
    let forced_free = index.is_some_and(|i| {
        let st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        st.forced_free
            .as_ref()
            .is_some_and(|f| f.contains(&(instance.clone(), i)))
    });
    if forced_free {
        return Ok((
            error_response(
                400,
                "InvalidParameterValue",
                &format!(
                    "Instance '{instance}' cannot attach an interface at device index '{}' \
                     after a forced detach until it is stopped and started.",
                    index.unwrap_or_default()
                ),
            ),
            "device-index-after-forced-detach",
        ));
    }
    if let Some(index) = index {
        if enis
            .iter()
            .any(|e| e.instance_id.as_deref() == Some(&instance) && e.device_index == Some(index))
        {
            return Ok((
                error_response(
                    400,
                    "InvalidParameterValue",
                    &format!(
                        "Instance '{instance}' already has an interface attached at device \
                         index '{index}'."
                    ),
                ),
                "device-index",
            ));
        }
    }
    let resp = forward(shared.upstream, req).await?;
    if resp.status == 200 {
        let delay = {
            let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
            let delay = st.attach_delay;
            if !delay.is_zero() {
                st.attaching.insert(eni.clone(), Instant::now() + delay);
            }
            delay
        };
        let change = Change {
            eni,
            instance,
            attached: true,
        };
        let shared2 = shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            notify(&shared2, change);
        });
    }
    Ok((resp, "forwarded"))
}

fn detach_ok() -> Response {
    Response::xml(
        200,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DetachNetworkInterfaceResponse \
         xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>front</requestId>\
         <return>true</return></DetachNetworkInterfaceResponse>"
            .into(),
    )
}

async fn detach(
    shared: &Arc<Shared>,
    req: &Request,
    params: &BTreeMap<String, String>,
) -> io::Result<(Response, &'static str)> {
    let attachment = params.get("AttachmentId").cloned().unwrap_or_default();
    let force = params
        .get("Force")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let _decide = shared.decide.lock().await;
    let enis = moto_enis(shared, req).await?;
    let Some((eni, holder, index)) = enis
        .iter()
        .find(|e| e.attachment_id.as_deref() == Some(attachment.as_str()))
        .map(|e| {
            (
                e.id.clone(),
                e.instance_id.clone().unwrap_or_default(),
                e.device_index,
            )
        })
    else {
        // Unknown attachment: moto answers InvalidAttachmentID.NotFound.
        return Ok((forward(shared.upstream, req).await?, "forwarded"));
    };
    let (delay, pending) = {
        let st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        (st.detach_delay, st.detaching.contains_key(&eni))
    };
    if force || delay.is_zero() {
        let resp = forward(shared.upstream, req).await?;
        if resp.status == 200 {
            let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
            st.detaching.remove(&eni);
            st.attaching.remove(&eni);
            if let (true, Some(f), Some(i)) = (force, st.forced_free.as_mut(), index) {
                f.push((holder.clone(), i));
            }
            drop(st);
            notify(
                shared,
                Change {
                    eni,
                    instance: holder,
                    attached: false,
                },
            );
        }
        return Ok((resp, if force { "forced" } else { "forwarded" }));
    }
    if pending {
        return Ok((detach_ok(), "detach-pending"));
    }
    let until = Instant::now() + delay;
    {
        let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        st.attaching.remove(&eni);
        st.detaching.insert(
            eni.clone(),
            PendingDetach {
                attachment_id: attachment.clone(),
                until,
            },
        );
    }
    let shared2 = shared.clone();
    let req2 = req.clone();
    tokio::spawn(async move {
        tokio::time::sleep_until(until.into()).await;
        let _decide = shared2.decide.lock().await;
        let still_pending = {
            let st = shared2.state.lock().unwrap_or_else(|p| p.into_inner());
            st.detaching
                .get(&eni)
                .is_some_and(|p| p.attachment_id == attachment)
        };
        if still_pending {
            // Whatever moto says, the transition is over: a failed forward shows up as the ENI
            // still attached, which a test would notice.
            let _ = forward(shared2.upstream, &req2).await;
            shared2
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .detaching
                .remove(&eni);
            notify(
                &shared2,
                Change {
                    eni,
                    instance: holder,
                    attached: false,
                },
            );
        }
    });
    Ok((detach_ok(), "detach-pending"))
}

fn notify(shared: &Shared, change: Change) {
    let hook = shared
        .on_change
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if let Some(f) = hook {
        f(change);
    }
}

/// moto writes a subnet's IPv6 CIDR block state as a Python dict
/// (`<state>{'State': 'associated'}</state>`); EC2 writes the word (`<state>associated</state>`),
/// which is what a client parses.
fn fix_cidr_block_states(mut resp: Response) -> Response {
    if resp.status != 200 {
        return resp;
    }
    let mut text = String::from_utf8_lossy(&resp.body).into_owned();
    for state in [
        "associating",
        "associated",
        "disassociating",
        "disassociated",
        "failing",
        "failed",
    ] {
        text = text.replace(
            &format!("<state>{{'State': '{state}'}}</state>"),
            &format!("<state>{state}</state>"),
        );
    }
    resp.body = text.into_bytes();
    resp
}

/// Rewrites moto's DescribeNetworkInterfaces answer with the front's transitional states and
/// DeleteOnTermination values.
fn overlay_describe(shared: &Shared, resp: Response) -> Response {
    if resp.status != 200 {
        return resp;
    }
    let text = String::from_utf8_lossy(&resp.body).into_owned();
    let Some(doc) = parse_xml(&text) else {
        return resp;
    };
    let now = Instant::now();
    let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    st.attaching.retain(|_, until| *until > now);
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    let items = doc
        .child("networkInterfaceSet")
        .map(|s| s.children.as_slice())
        .unwrap_or_default();
    for item in items {
        let id = item.child_text("networkInterfaceId").unwrap_or_default();
        let Some(att) = item.child("attachment") else {
            continue;
        };
        let transitional = if st.detaching.contains_key(id) {
            Some("detaching")
        } else if st.attaching.contains_key(id) {
            Some("attaching")
        } else {
            None
        };
        if let Some(state) = transitional {
            if let Some(span) = att.child("status").and_then(|s| s.text_span.clone()) {
                edits.push((span, state.to_owned()));
            }
        }
        let dot = att
            .child_text("attachmentId")
            .and_then(|a| st.delete_on_termination.get(a));
        if let (Some(dot), Some(span)) = (
            dot,
            att.child("deleteOnTermination")
                .and_then(|d| d.text_span.clone()),
        ) {
            edits.push((span, dot.to_string()));
        }
    }
    drop(st);
    if edits.is_empty() {
        return resp;
    }
    edits.sort_by_key(|(r, _)| std::cmp::Reverse(r.start));
    let mut out = text;
    for (range, value) in edits {
        out.replace_range(range, &value);
    }
    Response {
        body: out.into_bytes(),
        ..resp
    }
}
