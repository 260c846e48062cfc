//! The plan's policy rules (`from <ip> lookup <table>`), which live outside any link.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, IpVersion};

use super::{added, nl_error, no_family, Teardown};
use crate::net::{NetError, NetObject, RuleSpec};

/// Adds the rules that are missing; returns what it added. A rule is never replaced: re-adding
/// one fails with EEXIST, and a changed one would pile up beside the old.
pub(super) async fn ensure_rules(
    handle: &Handle,
    specs: &[RuleSpec],
) -> Result<Vec<String>, NetError> {
    let rules = all_rules(handle, specs).await?;
    let mut changed = Vec::new();
    for spec in specs {
        if rules.iter().any(|r| rule_matches(r, spec)) {
            continue;
        }
        let req = handle
            .rule()
            .add()
            .table_id(spec.table)
            .priority(spec.priority)
            .action(RuleAction::ToTable);
        let res = match spec.from {
            IpAddr::V4(from) => req.v4().source_prefix(from, 32).execute().await,
            IpAddr::V6(from) => req.v6().source_prefix(from, 128).execute().await,
        };
        if added(res).map_err(|e| nl_error(&format!("add rule {spec}"), e))? {
            changed.push(format!("rule {spec}"));
        }
    }
    Ok(changed)
}

/// Deletes every rule that is exactly one of the plan's, recording each result in `td`.
pub(super) async fn remove_rules(handle: &Handle, specs: &[RuleSpec], td: &mut Teardown) {
    let Some(rules) = td.check(NetObject::Rule, all_rules(handle, specs).await) else {
        return;
    };
    for spec in specs {
        for r in rules.iter().filter(|r| rule_matches(r, spec)) {
            let res = match td.injected(NetObject::Rule) {
                Some(e) => Err(e),
                None => handle.rule().del(r.clone()).execute().await,
            };
            td.deleted(NetObject::Rule, format!("rule {spec}"), res);
        }
    }
}

/// The rules of the families `specs` name. IPv6 rules are listed only for IPv6 specs, and a
/// kernel without IPv6 (`ipv6.disable=1`) has none: an IPv4-only host never depends on IPv6.
async fn all_rules(handle: &Handle, specs: &[RuleSpec]) -> Result<Vec<RuleMessage>, NetError> {
    let mut versions = vec![IpVersion::V4];
    if specs.iter().any(|s| s.from.is_ipv6()) {
        versions.push(IpVersion::V6);
    }
    let mut out: Vec<RuleMessage> = Vec::new();
    for version in versions {
        let listed: Result<Vec<RuleMessage>, _> = handle
            .rule()
            .get(version.clone())
            .execute()
            .try_collect()
            .await;
        match listed {
            Ok(rules) => out.extend(rules),
            Err(e) if version == IpVersion::V6 && no_family(&e) => {}
            Err(e) => return Err(nl_error("list rules", e)),
        }
    }
    Ok(out)
}

pub(super) fn rule_table(r: &RuleMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

/// Our rule, exactly: `from <ip>/32 lookup <table>` (/128 for IPv6) at our priority, and no
/// other selector.
fn rule_matches(r: &RuleMessage, spec: &RuleSpec) -> bool {
    let (family, host_len) = match spec.from {
        IpAddr::V4(_) => (AddressFamily::Inet, 32),
        IpAddr::V6(_) => (AddressFamily::Inet6, 128),
    };
    if r.header.family != family
        || r.header.action != RuleAction::ToTable
        || r.header.src_len != host_len
        || r.header.dst_len != 0
        || rule_table(r) != spec.table
    {
        return false;
    }
    let mut src = None;
    let mut priority = 0;
    for a in &r.attributes {
        match a {
            RuleAttribute::Source(v) => src = Some(*v),
            RuleAttribute::Priority(p) => priority = *p,
            RuleAttribute::Iifname(_)
            | RuleAttribute::Oifname(_)
            | RuleAttribute::FwMark(_)
            | RuleAttribute::Destination(_) => return false,
            _ => {}
        }
    }
    src == Some(spec.from) && priority == spec.priority
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn rule_match_is_exact() {
        let spec = RuleSpec {
            from: IpAddr::V4(Ipv4Addr::new(198, 18, 1, 25)),
            priority: 10001,
            table: 10001,
        };
        let mut r = RuleMessage::default();
        r.header.family = AddressFamily::Inet;
        r.header.action = RuleAction::ToTable;
        r.header.src_len = 32;
        r.attributes = vec![
            RuleAttribute::Source(spec.from),
            RuleAttribute::Priority(10001),
            RuleAttribute::Table(10001),
        ];
        assert!(rule_matches(&r, &spec));
        let mut other = r.clone();
        other.attributes.push(RuleAttribute::FwMark(1));
        assert!(
            !rule_matches(&other, &spec),
            "an extra selector is not our rule"
        );
        let mut other = r.clone();
        other.attributes[1] = RuleAttribute::Priority(100);
        assert!(!rule_matches(&other, &spec));
        let mut other = r.clone();
        other.header.action = RuleAction::Unspec;
        assert!(!rule_matches(&other, &spec), "a `none` rule routes nothing");
        let mut other = r.clone();
        other.header.src_len = 24;
        assert!(!rule_matches(&other, &spec));
        // The same rule for an IPv6 address: family and length follow the address.
        let v6 = RuleSpec {
            from: IpAddr::V6("2001:db8:0:1::25".parse().unwrap()),
            ..spec
        };
        let mut r6 = r;
        r6.attributes[0] = RuleAttribute::Source(v6.from);
        assert!(
            !rule_matches(&r6, &v6),
            "an IPv4 header is not the IPv6 rule"
        );
        r6.header.family = AddressFamily::Inet6;
        r6.header.src_len = 128;
        assert!(rule_matches(&r6, &v6));
        assert!(!rule_matches(&r6, &spec));
    }
}
