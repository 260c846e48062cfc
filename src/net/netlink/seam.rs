//! The adapter's test seam: faults and old behaviours that tests switch on, through
//! [`NetlinkNet::seam`](super::NetlinkNet::seam), to show that their checks can fail. Nothing in
//! the daemon touches it; with every field at its default the adapter behaves as shipped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::net::NetObject;

/// Runs once the hot-plugged link was found, with its index and the name it was found under,
/// before anything is configured: where a test renames the link to open the rename race.
pub type LinkFoundHook = Box<dyn Fn(u32, &str) + Send + Sync>;

#[derive(Default)]
pub struct TestSeam {
    /// Add addresses the way releases before the shared-subnet fix did: without
    /// `IFA_F_NOPREFIXROUTE`, so the kernel puts `<subnet> dev <eni> proto kernel` into the main
    /// table, and leave that route there. Only for negative controls.
    pub legacy_prefix_route: AtomicBool,
    /// The next delete of an object of this kind fails (once) without being sent.
    fail_delete: Mutex<Option<NetObject>>,
    after_link_found: Mutex<Option<LinkFoundHook>>,
}

impl std::fmt::Debug for TestSeam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestSeam")
            .field("legacy_prefix_route", &self.legacy_prefix_route)
            .field("fail_delete", &self.fail_delete)
            .finish_non_exhaustive()
    }
}

impl TestSeam {
    /// Makes the next delete of an `object` fail once.
    pub fn fail_next_delete(&self, object: NetObject) {
        *self.fail_delete.lock().unwrap_or_else(|e| e.into_inner()) = Some(object);
    }

    pub fn on_link_found(&self, hook: LinkFoundHook) {
        *self
            .after_link_found
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(hook);
    }

    pub(super) fn legacy(&self) -> bool {
        self.legacy_prefix_route.load(Ordering::SeqCst)
    }

    /// The delete fault asked for, taken (so it fires in one removal only).
    pub(super) fn take_delete_fault(&self) -> Option<NetObject> {
        self.fail_delete
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    pub(super) fn link_found(&self, index: u32, name: &str) {
        let hook = self
            .after_link_found
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(h) = hook.as_ref() {
            h(index, name);
        }
    }
}
