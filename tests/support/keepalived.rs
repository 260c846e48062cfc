//! keepalived in the lab: the baseline users run today, for `make bench` (tests/bench.rs).
//!
//! One keepalived 2.2 per instance namespace, in the foreground (`keepalived -n -l -D -f FILE
//! -p PIDFILE -r VRRP_PIDFILE`), unicast VRRP over the instances' primary addresses, no VIP,
//! (a link-local placeholder VIP at sub-second adverts, which need VRRPv3, and v3 requires
//! one), both nodes `state BACKUP` with `nopreempt` and equal priority (so a node that comes back
//! does not take the ENI back; the one started first becomes master). Its `notify_master`
//! script is the recipe people write for an ENI: the AWS CLI from the lab's `.venv` against the
//! lab's cloud front — describe, force-detach from the other instance, poll until `available`,
//! attach, wait for the NIC by MAC, then address, source rule and table route, and reload nginx.
//! The script stamps each step (ms since the epoch) into a file, so the bench can split the
//! outage into detection and takeover like enipeer's own timeline.
//!
//! Compiled into tests/bench.rs only (`#[path]`), so the other test binaries do not carry it.
//! This module owns the processes it starts: [`Keepalived::stop_all`] (and drop) stops them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::support::lab::{Lab, Layout};
use crate::support::Side;

/// The policy table and rule priority the recipe uses: the same as enipeer's shipped example,
/// so the bench counts stale rules on the old master the same way for both.
const TABLE: u32 = 10001;
const RULE_PRIORITY: u32 = 1000;
/// The ENI subnet's gateway in the lab's own-subnet layout.
const ENI_GATEWAY: &str = "198.18.1.1";

/// Where keepalived is installed by Debian's package.
pub fn binary() -> Option<PathBuf> {
    [
        "/usr/sbin/keepalived",
        "/usr/bin/keepalived",
        "/sbin/keepalived",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// `keepalived --version`'s first line, e.g. "Keepalived v2.2.7 (01/16,2022)".
pub fn version() -> String {
    binary()
        .and_then(|b| Command::new(b).arg("--version").output().ok())
        .map(|o| {
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            all.lines().next().unwrap_or("").trim().to_owned()
        })
        .unwrap_or_default()
}

/// The keepalived pair of the lab, at one advertisement interval.
pub struct Keepalived {
    pub advert: Duration,
    dir: PathBuf,
    children: [Option<Child>; 2],
}

impl Keepalived {
    pub fn new(lab: &Lab, advert: Duration) -> Keepalived {
        Keepalived {
            advert,
            dir: lab.dir().to_path_buf(),
            children: [None, None],
        }
    }

    fn file(&self, side: Side, what: &str) -> PathBuf {
        self.dir.join(format!("ka-{}.{what}", side.name()))
    }

    /// keepalived.conf for `side`: unicast VRRP, no VIP, the recipe as notify_master.
    pub fn config(&self, side: Side) -> String {
        let advert = self.advert.as_secs_f64();
        // Sub-second advertisements exist only in VRRPv3 (v2, what most configs use, rounds
        // them up), and keepalived refuses a v3 instance without a VIP: a link-local
        // placeholder nobody routes to, the recipe still moves the ENI.
        let (version, vip) = if advert < 1.0 {
            (
                "  vrrp_version 3\n",
                "  virtual_ipaddress {\n    169.254.77.1/32 dev eth0\n  }\n",
            )
        } else {
            ("", "")
        };
        format!(
            "global_defs {{\n  router_id {name}\n  script_user root\n{version}}}\n\
             vrrp_instance ENI {{\n  state BACKUP\n  nopreempt\n  interface eth0\n\
             \x20 virtual_router_id 51\n  priority 100\n  advert_int {advert}\n\
             \x20 unicast_src_ip {me}\n  unicast_peer {{\n    {peer}\n  }}\n\
             {vip}\x20 notify_master \"{master}\"\n  notify \"{notify}\"\n}}\n",
            name = side.name(),
            me = side.node_ip(),
            peer = side.peer().node_ip(),
            master = self.file(side, "master.sh").display(),
            notify = self.file(side, "notify.sh").display(),
        )
    }

    /// The notify_master recipe for `side` in the lab as it is seeded now.
    pub fn recipe(&self, lab: &Lab, side: Side) -> String {
        assert_eq!(
            lab.layout,
            Layout::OwnSubnet,
            "the recipe routes via br-eni"
        );
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/aws");
        format!(
            r#"#!/bin/sh
# keepalived notify_master: move the ENI here with the AWS CLI (the usual recipe).
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION={region}
export AWS_CONFIG_FILE=/nonexistent AWS_SHARED_CREDENTIALS_FILE=/nonexistent
ENI={eni}
ME={me}
mark() {{ echo "$(date +%s%3N) $*" >> {steps}; }}
ec2() {{ {aws} --endpoint-url {url} ec2 "$@"; }}
status() {{ ec2 describe-network-interfaces --network-interface-ids "$ENI" --query 'NetworkInterfaces[0].Status' --output text; }}
mark notify_master
set -- $(ec2 describe-network-interfaces --network-interface-ids "$ENI" \
  --query 'NetworkInterfaces[0].[MacAddress,Attachment.AttachmentId,Attachment.InstanceId]' --output text)
MAC=$1 ATT=$2 HOLDER=$3
mark described holder=$HOLDER
if [ "$HOLDER" != "$ME" ]; then
  if [ "$ATT" != None ]; then
    ec2 detach-network-interface --attachment-id "$ATT" --force || exit 1
    mark detach
  fi
  i=0
  until [ "$(status)" = available ]; do
    i=$((i+1)); [ $i -gt 100 ] && {{ mark never available; exit 1; }}
    sleep 0.2
  done
  mark available
  ec2 attach-network-interface --network-interface-id "$ENI" --instance-id "$ME" --device-index 1 >/dev/null || exit 1
  mark attach
fi
i=0
while :; do
  DEV=$(ip -br link | awk -v m="$MAC" 'tolower($3) == tolower(m) {{ sub(/@.*/, "", $1); print $1 }}')
  [ -n "$DEV" ] && break
  i=$((i+1)); [ $i -gt 600 ] && {{ mark no NIC; exit 1; }}
  sleep 0.05
done
mark link $DEV
ip link set "$DEV" up
ip addr replace {ip}/24 dev "$DEV"
ip rule add from {ip} lookup {table} priority {prio} 2>/dev/null || true
ip route replace default via {gw} dev "$DEV" table {table}
nginx -c {nginx} -s reload
mark serving
"#,
            region = crate::support::REGION,
            eni = lab.seeded.eni.as_str(),
            me = lab.seeded.instance(side).as_str(),
            steps = self.file(side, "steps").display(),
            aws = venv.display(),
            url = Lab::front_url(),
            ip = lab.layout.eni_ip(),
            table = TABLE,
            prio = RULE_PRIORITY,
            gw = ENI_GATEWAY,
            nginx = lab.nginx_conf(side).display(),
        )
    }

    /// Writes both nodes' files for the lab as seeded now (ids change on every reset).
    pub fn write_files(&self, lab: &Lab) {
        for side in Side::BOTH {
            let _ = std::fs::remove_file(self.file(side, "steps"));
            let _ = std::fs::remove_file(self.file(side, "state"));
            std::fs::write(self.file(side, "conf"), self.config(side)).expect("keepalived.conf");
            let notify = format!(
                "#!/bin/sh\necho \"$3\" > {}\n",
                self.file(side, "state").display()
            );
            for (name, text) in [("master.sh", self.recipe(lab, side)), ("notify.sh", notify)] {
                let f = self.file(side, name);
                std::fs::write(&f, text).expect("keepalived script");
                crate::support::netns::sh(&["chmod", "755", f.to_str().expect("utf-8")]);
            }
        }
    }

    pub fn start(&mut self, side: Side) {
        let bin = binary().expect("keepalived is installed (make bench installs it)");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.file(side, "log"))
            .expect("keepalived log");
        let child = Command::new("ip")
            .args(["netns", "exec", side.ns()])
            .arg(bin)
            .args(["-n", "-l", "-D", "-f"])
            .arg(self.file(side, "conf"))
            .arg("-p")
            .arg(self.file(side, "pid"))
            .arg("-r")
            .arg(self.file(side, "vrrp.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start keepalived");
        self.children[side.pick([0, 1])] = Some(child);
    }

    /// The VRRP state the notify script last wrote ("MASTER", "BACKUP", "FAULT"), or "".
    pub fn state(&self, side: Side) -> String {
        std::fs::read_to_string(self.file(side, "state"))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// The recipe's steps on `side`: (unix ms, what).
    pub fn steps(&self, side: Side) -> Vec<(u64, String)> {
        std::fs::read_to_string(self.file(side, "steps"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (t, what) = l.split_once(' ')?;
                Some((t.parse().ok()?, what.to_owned()))
            })
            .collect()
    }

    /// When `side`'s notify_master started (unix ms): keepalived's takeover decision.
    pub fn decided_unix_ms(&self, side: Side) -> Option<u64> {
        self.steps(side)
            .iter()
            .rev()
            .find(|(_, w)| w == "notify_master")
            .map(|(t, _)| *t)
    }

    /// The recipe's steps on `side` relative to its start, for the log: "0 notify_master, ...".
    pub fn render_steps(&self, side: Side) -> String {
        let steps = self.steps(side);
        let t0 = steps.first().map(|s| s.0).unwrap_or(0);
        steps
            .iter()
            .map(|(t, w)| format!("{:>6} ms  {w}", t - t0))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The usual start: node-a alone becomes master and moves the ENI, then node-b joins as
    /// backup and has heard node-a.
    pub fn start_pair(&mut self, lab: &Lab) {
        self.write_files(lab);
        self.start(Side::A);
        let within = Duration::from_secs(30);
        let started = Instant::now();
        while !(self.steps(Side::A).iter().any(|s| s.1 == "serving") && lab.serving(Side::A)) {
            assert!(
                started.elapsed() < within,
                "keepalived on node-a did not take the ENI within {within:?}:\n{}\n{}",
                self.render_steps(Side::A),
                crate::support::lab::tail(&self.log(Side::A), 30)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.start(Side::B);
        let started = Instant::now();
        while self.state(Side::B) != "BACKUP" && started.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Two advertisements heard, so node-b is not still in its start-up wait.
        std::thread::sleep(self.advert * 2 + Duration::from_millis(100));
        assert_eq!(self.state(Side::A), "MASTER", "node-a stays master");
        assert_ne!(self.state(Side::B), "MASTER", "node-b stays backup");
    }

    pub fn log(&self, side: Side) -> String {
        std::fs::read_to_string(self.file(side, "log")).unwrap_or_default()
    }

    /// The processes of `side`'s keepalived: the parent and its VRRP child.
    pub fn pids(&self, side: Side) -> Vec<i32> {
        ["pid", "vrrp.pid"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(self.file(side, f)).ok())
            .filter_map(|s| s.trim().parse().ok())
            .collect()
    }

    /// Stops both keepalived (SIGTERM, then SIGKILL after 3 s) and waits for them.
    pub fn stop_all(&mut self) {
        for side in Side::BOTH {
            let pids = self.pids(side);
            let Some(mut child) = self.children[side.pick([0, 1])].take() else {
                continue;
            };
            for p in &pids {
                let _ = nix::sys::signal::kill(Pid::from_raw(*p), Signal::SIGCONT);
            }
            let _ = nix::sys::signal::kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            // Only if the pid is still a keepalived: the parent's exit normally took it along.
            for p in pids {
                let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
                if comm.trim() == "keepalived" {
                    let _ = nix::sys::signal::kill(Pid::from_raw(p), Signal::SIGKILL);
                }
            }
            for f in ["pid", "vrrp.pid"] {
                let _ = std::fs::remove_file(self.file(side, f));
            }
        }
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        self.stop_all();
    }
}
