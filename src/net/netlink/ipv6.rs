//! The IPv6 part of a plan: applied after the IPv4 part and on its own, so that whatever goes
//! wrong with IPv6 (a host with IPv6 turned off, a kernel without IPv6 policy routing) leaves
//! the IPv4 service in place; the failure is reported beside the result and the next
//! reconcile tries again.
//!
//! It also removes what router advertisements may have configured before enipeer set the ENI's
//! sysctls (when something else brought the link up first): routes in the main table and
//! autoconfigured addresses.

use rtnetlink::Handle;

use super::link::LinkState;
use super::{addr, route};
use crate::net::plan::Family;
use crate::net::{NetError, NetPlan};

/// What [`ensure`] did.
#[derive(Debug, Default)]
pub(super) struct Ensured {
    pub changed: Vec<String>,
    /// Of `changed`, the routes via the router.
    pub via_router: Vec<String>,
    /// The plan's routes via the router are all in place (found or added).
    pub router_in_place: bool,
}

/// Makes the IPv6 part `v6` of `plan` true on `link`; the ENI's RA sysctls are already set.
pub(super) async fn ensure(
    handle: &Handle,
    link: &LinkState,
    plan: &NetPlan,
    v6: &Family,
) -> Result<Ensured, NetError> {
    let mut changed = route::remove_ra_routes(handle, link).await?;
    changed.extend(addr::remove_autoconf(handle, link, &v6.addresses).await?);
    let guarded = super::ensure_guarded_rules(handle, link, plan.table, v6).await?;
    changed.extend(guarded.added);
    changed.extend(addr::ensure_addresses(handle, link, &v6.addresses, false).await?);
    let routes = route::ensure_routes(handle, link.index, plan.table, &v6.routes).await?;
    changed.extend(routes.added);
    let mut via_router = guarded.via_router;
    via_router.extend(routes.via_router);
    Ok(Ensured {
        changed,
        via_router,
        router_in_place: routes.router_in_place,
    })
}

/// `e` with what to check, for the log line that reports an IPv6 failure.
pub(super) fn with_hint(e: NetError) -> NetError {
    NetError::new(
        e.kind,
        format!(
            "{e} (IPv4 is configured; is IPv6 disabled on this host? check \
             net.ipv6.conf.all.disable_ipv6 and the ipv6.disable boot option)"
        ),
    )
}
