//! Network namespaces for the tests that need a real kernel (tests/net_netlink.rs and the lab):
//! a named namespace deleted by a drop guard, helpers that run `ip` in it or a closure on a
//! thread that entered it, and the removal of a crashed run's leftover by its exact name.
//!
//! Nothing here touches the root namespace; every namespace is named by the test that made it
//! and removed by that exact name, never by a pattern. Standalone on purpose (std, nix, libc,
//! serde_json): tests/net_netlink.rs includes it by path without the EC2 support.

#![allow(dead_code)]

use std::fs::File;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::sys::signal::Signal;
use serde_json::Value;

/// Where `ip netns add` puts the namespace files.
const NETNS_DIR: &str = "/run/netns";

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs a command, failing loudly with its output.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command whose failure is expected at times (cleanup, probing); true on success.
pub fn sh_quiet(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

pub fn exists(name: &str) -> bool {
    path_of(name).exists()
}

/// Pids of the processes in namespace `name` (none if it does not exist).
pub fn pids(name: &str) -> Vec<i32> {
    if !exists(name) {
        return Vec::new();
    }
    Command::new("ip")
        .args(["netns", "pids", name])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Sends `sig` to every process in namespace `name`.
pub fn signal(name: &str, sig: Signal) {
    for pid in pids(name) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// Removes namespace `name` and kills what runs in it (continued first, so a stopped process
/// dies too). Only this exact name: a leftover of a crashed run, or a guard's own teardown.
pub fn remove(name: &str) {
    if exists(name) {
        signal(name, Signal::SIGCONT);
        signal(name, Signal::SIGKILL);
        sh_quiet(&["ip", "netns", "del", name]);
    }
}

/// The name of the link with MAC address `mac` in namespace `name`, if it is there (names
/// change on moves and renames; the MAC does not).
pub fn link_by_mac(name: &str, mac: &str) -> Option<String> {
    if !exists(name) {
        return None;
    }
    let out = Command::new("ip")
        .args(["-n", name, "-j", "link", "show"])
        .output()
        .ok()?;
    let links: Value = serde_json::from_slice(&out.stdout).ok()?;
    links.as_array()?.iter().find_map(|l| {
        (l.get("address")?.as_str()? == mac)
            .then(|| l.get("ifname")?.as_str().map(str::to_owned))?
    })
}

/// Moves the calling thread into namespace `name`: sockets it opens afterwards live there.
pub fn enter(name: &str) {
    let path = path_of(name);
    let f = File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // SAFETY: setns on a valid namespace fd, owned for the duration of the call, affects only
    // the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "setns {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Starts `f` on a new thread that has entered namespace `name`.
pub fn spawn_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let name = name.to_owned();
    std::thread::spawn(move || {
        enter(&name);
        f()
    })
}

/// Runs `f` on a thread that has entered namespace `name` and returns its result (a panic in
/// `f` is resumed here, so the test fails with its message).
pub fn run_in<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in(name, f)
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Runs an async body on a current-thread runtime inside namespace `name`: its netlink sockets
/// and its /proc/sys accesses all happen there.
pub fn block_in<F, Fut, T>(name: &str, f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    run_in(name, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the namespace thread")
            .block_on(f())
    })
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A named network namespace, deleted (with whatever still runs in it) when dropped.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `name`, first removing a leftover of that exact name (a crashed
    /// earlier run would make `ip netns add` fail).
    pub fn create(name: &str) -> Netns {
        remove(name);
        sh(&["ip", "netns", "add", name]);
        Netns { name: name.into() }
    }

    /// A namespace of its own for one test: `<prefix>-<pid>-<n>`.
    pub fn unique(prefix: &str) -> Netns {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        Netns::create(&format!("{prefix}-{}-{n}", std::process::id()))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME args…`, failing loudly.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// `ip -n NAME args…`; true on success.
    pub fn try_ip(&self, args: &[&str]) -> bool {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        sh_quiet(&full)
    }

    /// `ip netns exec NAME args…`, failing loudly.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// `ip -j -n NAME args…` parsed; an empty answer is an empty array.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut full = vec!["-j"];
        full.extend_from_slice(args);
        let out = self.ip(&full);
        if out.trim().is_empty() {
            return Value::Array(vec![]);
        }
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip {full:?}: {e}: {out}"))
    }

    pub fn signal(&self, sig: Signal) {
        signal(&self.name, sig);
    }

    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        run_in(&self.name, f)
    }

    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        spawn_in(&self.name, f)
    }

    pub fn block_on<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        block_in(&self.name, f)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove(&self.name);
    }
}
