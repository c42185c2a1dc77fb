//! The learning hook: what the proxy calls with the addresses of an answer
//! **before** it releases the answer, and with the addresses whose TTL (plus
//! grace) ran out. The agent wires it to `Engine::learn_fqdn` /
//! `Engine::forget_fqdn` and writes the resulting deltas to the datapath;
//! the future it returns resolves once they are enforced. The proxy waits
//! for it at most `max_delay`.

use palisade_policy::engine::Engine;
use palisade_policy::mapstate::MapDelta;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

/// The future a hook returns.
pub type HookFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Addresses an answer taught.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FqdnUpdate {
    /// The querying endpoint (`namespace/pod`, `-` when not local).
    pub endpoint: String,
    /// The query name and the CNAME targets that led to the addresses.
    pub names: Vec<String>,
    /// Addresses new to this endpoint and name.
    pub ips: Vec<IpAddr>,
}

/// Receives learned and expired addresses.
pub trait FqdnHook: Send + Sync + 'static {
    /// Called before the answer is released; resolve once enforced.
    fn learn(&self, update: FqdnUpdate) -> HookFuture;
    /// Addresses no cached name references any more.
    fn forget(&self, ips: Vec<IpAddr>);
}

/// A hook that does nothing (the proxy still enforces DNS rules).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHook;

impl FqdnHook for NoHook {
    fn learn(&self, _: FqdnUpdate) -> HookFuture {
        Box::pin(async {})
    }
    fn forget(&self, _: Vec<IpAddr>) {}
}

/// Deltas callback of [`EngineHook`].
pub type DeltaFn = dyn Fn(&BTreeMap<String, MapDelta>) + Send + Sync;

/// The hook the agent uses: applies the update to a shared [`Engine`]
/// (FQDN identities in the ipcache and every endpoint's map) and hands the
/// deltas to `on_deltas` (the datapath writer), synchronously, so that
/// when the future resolves the new addresses are enforced.
#[derive(Clone)]
pub struct EngineHook {
    engine: Arc<Mutex<Engine>>,
    on_deltas: Option<Arc<DeltaFn>>,
}

impl std::fmt::Debug for EngineHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHook").finish_non_exhaustive()
    }
}

impl EngineHook {
    pub fn new(engine: Arc<Mutex<Engine>>) -> Self {
        EngineHook {
            engine,
            on_deltas: None,
        }
    }

    /// Also calls `f` with every non-empty set of deltas.
    pub fn with_deltas(
        mut self,
        f: impl Fn(&BTreeMap<String, MapDelta>) + Send + Sync + 'static,
    ) -> Self {
        self.on_deltas = Some(Arc::new(f));
        self
    }

    pub fn engine(&self) -> &Arc<Mutex<Engine>> {
        &self.engine
    }

    fn with_engine<T>(&self, f: impl FnOnce(&mut Engine) -> T) -> T {
        let mut g = match self.engine.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }

    /// Applies an update now; returns the deltas.
    pub fn apply(&self, update: &FqdnUpdate) -> BTreeMap<String, MapDelta> {
        let deltas = self.with_engine(|e| {
            let mut all: BTreeMap<String, MapDelta> = BTreeMap::new();
            for ip in &update.ips {
                for name in &update.names {
                    for (k, d) in e.learn_fqdn(name, *ip) {
                        let x = all.entry(k).or_default();
                        x.adds.extend(d.adds);
                        x.removes.extend(d.removes);
                    }
                }
            }
            all
        });
        if let Some(f) = &self.on_deltas
            && !deltas.is_empty()
        {
            f(&deltas);
        }
        deltas
    }
}

impl FqdnHook for EngineHook {
    fn learn(&self, update: FqdnUpdate) -> HookFuture {
        self.apply(&update);
        Box::pin(async {})
    }

    fn forget(&self, ips: Vec<IpAddr>) {
        let deltas = self.with_engine(|e| {
            let mut all: BTreeMap<String, MapDelta> = BTreeMap::new();
            for ip in ips {
                for (k, d) in e.forget_fqdn(ip) {
                    let x = all.entry(k).or_default();
                    x.adds.extend(d.adds);
                    x.removes.extend(d.removes);
                }
            }
            all
        });
        if let Some(f) = &self.on_deltas
            && !deltas.is_empty()
        {
            f(&deltas);
        }
    }
}
