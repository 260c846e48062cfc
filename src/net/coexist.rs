//! Other network managers on the host that would also configure the hot-plugged ENI (and undo or
//! duplicate what enipeer does): amazon-ec2-net-utils, NetworkManager and systemd-networkd.
//!
//! Detection only reads files; each warning names the exact change that makes the manager leave
//! the ENI alone, so the operator never has to guess. Nothing here changes the host.

use std::fs;
use std::path::{Path, PathBuf};

/// Warnings for the managers that would handle the interface with this MAC; empty when none
/// would. Call at start and log each at warn.
pub fn coexistence_warnings(mac: &str) -> Vec<String> {
    coexistence_warnings_in(Path::new("/"), mac)
}

/// [`coexistence_warnings`] against a different root directory (for tests).
pub fn coexistence_warnings_in(root: &Path, mac: &str) -> Vec<String> {
    let mac = mac.to_ascii_lowercase();
    let mut out = Vec::new();
    let networkd_excluded = networkd_unmanaged(root, &mac);
    let networkd_file = networkd_fix_path(&mac);
    let networkd_fix = format!(
        "create {networkd_file} containing \"[Match]\\nMACAddress={mac}\\n\\n[Link]\\nUnmanaged=yes\\n\" \
         and run `networkctl reload` (networkd uses the first matching .network file in lexical \
         order, so the 00- prefix wins over the distribution's files)"
    );

    if let Some(found) = ec2_net_utils(root) {
        let udev_excluded = read(&root.join("etc/udev/rules.d/99-vpc-policy-routes.rules"))
            .is_some_and(|t| t.to_ascii_lowercase().contains(&mac));
        let mut fixes = Vec::new();
        if !networkd_excluded {
            fixes.push(networkd_fix.clone());
        }
        if !udev_excluded {
            fixes.push(format!(
                "copy /usr/lib/udev/rules.d/99-vpc-policy-routes.rules to /etc/udev/rules.d/ and \
                 add `ATTR{{address}}!=\"{mac}\", ` to its ACTION==\"add\" line, so no \
                 policy-routes@ / refresh-policy-routes@ units start for this ENI"
            ));
        }
        if !fixes.is_empty() {
            out.push(format!(
                "amazon-ec2-net-utils is installed ({}): it would configure ENI {mac} itself \
                 (DHCP, rules and table 10000 + device index, refreshed every minute) and fight \
                 enipeer over it. Fix: {}",
                found.display(),
                fixes.join("; and ")
            ));
        }
    }

    if networkd_active(root) {
        if !networkd_excluded {
            out.push(format!(
                "systemd-networkd is running and would manage ENI {mac} when it is hot-plugged \
                 if any .network file matches it. Fix: {networkd_fix}"
            ));
        }
        if !networkd_keeps_foreign(root) {
            out.push(
                "systemd-networkd removes routing policy rules and routes it did not configure \
                 whenever it reconfigures (ManageForeignRoutingPolicyRules=yes by default), which \
                 deletes enipeer's rules. Fix: create /etc/systemd/networkd.conf.d/enipeer.conf \
                 containing \"[Network]\\nManageForeignRoutingPolicyRules=no\\n\
                 ManageForeignRoutes=no\\n\" and restart systemd-networkd"
                    .to_owned(),
            );
        }
    }

    if network_manager_active(root) && !network_manager_unmanaged(root, &mac) {
        out.push(format!(
            "NetworkManager is running and would manage ENI {mac} when it is hot-plugged. Fix: \
             create /etc/NetworkManager/conf.d/99-enipeer.conf containing \
             \"[keyfile]\\nunmanaged-devices=mac:{mac}\\n\" (if another file already sets \
             unmanaged-devices, append `;mac:{mac}` to that list instead: the last file's value \
             wins) and run `nmcli general reload conf`"
        ));
    }
    out
}

fn networkd_fix_path(mac: &str) -> String {
    format!(
        "/etc/systemd/network/00-enipeer-{}.network",
        mac.replace(':', "")
    )
}

fn read(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok()
}

/// Files of `dir` (under `root`) ending in `suffix`, sorted; missing directories are empty.
fn files(root: &Path, dir: &str, suffix: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(root.join(dir))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with(suffix))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn ec2_net_utils(root: &Path) -> Option<PathBuf> {
    [
        "usr/lib/udev/rules.d/99-vpc-policy-routes.rules",
        "lib/udev/rules.d/99-vpc-policy-routes.rules",
        "usr/bin/setup-policy-routes",
        "usr/lib/systemd/network/80-ec2.network",
        "usr/lib/systemd/system/policy-routes@.service",
    ]
    .iter()
    .map(|p| root.join(p))
    .find(|p| p.exists())
    .map(|p| Path::new("/").join(p.strip_prefix(root).unwrap_or(&p)))
}

fn networkd_active(root: &Path) -> bool {
    // /run/systemd/netif exists while networkd runs; the wants link means it starts at boot.
    root.join("run/systemd/netif").is_dir()
        || root
            .join("etc/systemd/system/multi-user.target.wants/systemd-networkd.service")
            .exists()
}

const NETWORKD_DIRS: [&str; 4] = [
    "etc/systemd/network",
    "run/systemd/network",
    "usr/lib/systemd/network",
    "lib/systemd/network",
];

/// Some .network file matches this MAC and says `Unmanaged=yes`.
fn networkd_unmanaged(root: &Path, mac: &str) -> bool {
    NETWORKD_DIRS
        .iter()
        .flat_map(|d| files(root, d, ".network"))
        .filter_map(|p| read(&p))
        .any(|text| {
            let mut matches_mac = false;
            let mut unmanaged = false;
            for line in text.lines().map(str::trim) {
                if let Some(v) = line.strip_prefix("MACAddress=") {
                    matches_mac |= v.split_whitespace().any(|m| m.eq_ignore_ascii_case(mac));
                }
                if let Some(v) = line.strip_prefix("Unmanaged=") {
                    unmanaged = matches!(v.trim(), "yes" | "true" | "1" | "on");
                }
            }
            matches_mac && unmanaged
        })
}

fn networkd_keeps_foreign(root: &Path) -> bool {
    let mut paths = vec![
        root.join("etc/systemd/networkd.conf"),
        root.join("usr/lib/systemd/networkd.conf"),
    ];
    for d in [
        "etc/systemd/networkd.conf.d",
        "run/systemd/networkd.conf.d",
        "usr/lib/systemd/networkd.conf.d",
    ] {
        paths.extend(files(root, d, ".conf"));
    }
    paths.iter().filter_map(|p| read(p)).any(|t| {
        t.lines().any(|l| {
            l.trim()
                .strip_prefix("ManageForeignRoutingPolicyRules=")
                .is_some_and(|v| matches!(v.trim(), "no" | "false" | "0" | "off"))
        })
    })
}

fn network_manager_active(root: &Path) -> bool {
    root.join("run/NetworkManager").is_dir()
        || root
            .join("etc/systemd/system/multi-user.target.wants/NetworkManager.service")
            .exists()
}

fn network_manager_unmanaged(root: &Path, mac: &str) -> bool {
    let mut paths = vec![root.join("etc/NetworkManager/NetworkManager.conf")];
    for d in [
        "usr/lib/NetworkManager/conf.d",
        "run/NetworkManager/conf.d",
        "etc/NetworkManager/conf.d",
    ] {
        paths.extend(files(root, d, ".conf"));
    }
    let wanted = format!("mac:{mac}");
    paths.iter().filter_map(|p| read(p)).any(|t| {
        t.lines().any(|l| {
            l.trim()
                .strip_prefix("unmanaged-devices=")
                .is_some_and(|v| {
                    v.split([';', ','])
                        .any(|d| d.trim().eq_ignore_ascii_case(&wanted) || d.trim() == "*")
                })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: &str = "0a:1b:2c:3d:4e:5f";

    fn put(root: &Path, path: &str, text: &str) {
        let p = root.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    #[test]
    fn clean_host_has_no_warnings() {
        let dir = tempfile::tempdir().unwrap();
        assert!(coexistence_warnings_in(dir.path(), MAC).is_empty());
    }

    #[test]
    fn ec2_net_utils_needs_networkd_and_udev_fixes() {
        let dir = tempfile::tempdir().unwrap();
        put(
            dir.path(),
            "usr/lib/udev/rules.d/99-vpc-policy-routes.rules",
            "x",
        );
        let w = coexistence_warnings_in(dir.path(), "0A:1B:2C:3D:4E:5F");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("amazon-ec2-net-utils"));
        assert!(w[0].contains("/etc/systemd/network/00-enipeer-0a1b2c3d4e5f.network"));
        assert!(w[0].contains("MACAddress=0a:1b:2c:3d:4e:5f"));
        assert!(w[0].contains("Unmanaged=yes"));
        assert!(w[0].contains("ATTR{address}!=\"0a:1b:2c:3d:4e:5f\""));

        // Both fixes in place: silence.
        put(
            dir.path(),
            "etc/systemd/network/00-enipeer-0a1b2c3d4e5f.network",
            "[Match]\nMACAddress=0A:1B:2C:3D:4E:5F\n\n[Link]\nUnmanaged=yes\n",
        );
        put(
            dir.path(),
            "etc/udev/rules.d/99-vpc-policy-routes.rules",
            "SUBSYSTEM==\"net\", ACTION==\"add\", ATTR{address}!=\"0a:1b:2c:3d:4e:5f\", RUN+=\"...\"\n",
        );
        assert!(coexistence_warnings_in(dir.path(), MAC).is_empty());
    }

    #[test]
    fn networkd_running_without_exclusion_warns_twice() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("run/systemd/netif")).unwrap();
        let w = coexistence_warnings_in(dir.path(), MAC);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("Unmanaged=yes"));
        assert!(w[1].contains("ManageForeignRoutingPolicyRules=no"));

        // An Unmanaged file for another MAC does not count.
        put(
            dir.path(),
            "etc/systemd/network/00-other.network",
            "[Match]\nMACAddress=0a:1b:2c:3d:4e:00\n[Link]\nUnmanaged=yes\n",
        );
        put(
            dir.path(),
            "etc/systemd/networkd.conf.d/enipeer.conf",
            "[Network]\nManageForeignRoutingPolicyRules=no\n",
        );
        let w = coexistence_warnings_in(dir.path(), MAC);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("00-enipeer-0a1b2c3d4e5f.network"));
    }

    #[test]
    fn network_manager_wants_unmanaged_devices() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("run/NetworkManager")).unwrap();
        let w = coexistence_warnings_in(dir.path(), MAC);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("unmanaged-devices=mac:0a:1b:2c:3d:4e:5f"));
        put(
            dir.path(),
            "etc/NetworkManager/conf.d/99-enipeer.conf",
            "[keyfile]\nunmanaged-devices=interface-name:eth9;mac:0A:1B:2C:3D:4E:5F\n",
        );
        assert!(coexistence_warnings_in(dir.path(), MAC).is_empty());
    }
}
