//! The selector cache: for every distinct peer selector, the identities it
//! selects, kept up to date as identities come and go. An inverted index on
//! identity labels keeps both selection and updates sub-linear.

use crate::identity::{Identity, IdentityAllocator, IdentityKind, NumericIdentity, WORLD};
use crate::repository::PeerSel;
use crate::selector::Operator;
use std::collections::{BTreeSet, HashMap};

/// Index of a selector in the cache.
pub type SelId = usize;

#[derive(Clone, Debug, Default)]
pub struct SelectorCache {
    sels: Vec<PeerSel>,
    ids: HashMap<PeerSel, SelId>,
    selected: Vec<BTreeSet<NumericIdentity>>,
    /// (label key, value) → identities carrying it (any source).
    by_label: HashMap<(String, String), BTreeSet<NumericIdentity>>,
    /// label key → identities carrying it (any source, any value).
    by_key: HashMap<String, BTreeSet<NumericIdentity>>,
    /// (label key, value) → selectors whose requirements include it.
    sels_by_label: HashMap<(String, String), Vec<SelId>>,
    /// Selectors without an equality requirement: checked for every identity.
    unindexed: Vec<SelId>,
}

/// Whether a selector selects an identity.
pub fn peer_matches(sel: &PeerSel, identity: &Identity) -> bool {
    match sel {
        PeerSel::Wildcard => true,
        PeerSel::Labels(s) => s.matches(&identity.labels),
        PeerSel::Cidr { cidr, except } => {
            if cidr.len == 0 && identity.id == WORLD {
                return true;
            }
            match identity.prefix() {
                Some(p) => cidr.contains(p) && !except.iter().any(|e| e.contains(p)),
                None => false,
            }
        }
        PeerSel::Fqdn(f) => match &identity.kind {
            IdentityKind::Fqdn { names, .. } => names.iter().any(|n| f.matches(n)),
            _ => false,
        },
    }
}

fn index_key(sel: &PeerSel) -> Option<(String, String)> {
    match sel {
        PeerSel::Labels(s) => {
            // Prefer a requirement other than the namespace (more selective).
            let eqs: Vec<_> = s
                .requirements
                .iter()
                .filter(|r| r.op == Operator::In && r.values.len() == 1)
                .collect();
            let best = eqs
                .iter()
                .find(|r| {
                    r.key.key != crate::labels::POD_NAMESPACE && r.key.key != crate::labels::CLUSTER
                })
                .or_else(|| eqs.first())?;
            let v = best.values.iter().next()?;
            Some((best.key.key.clone(), v.clone()))
        }
        _ => None,
    }
}

impl SelectorCache {
    pub fn new(identities: &IdentityAllocator) -> Self {
        let mut c = SelectorCache::default();
        for i in identities.iter() {
            c.index_identity(i);
        }
        c
    }

    fn index_identity(&mut self, i: &Identity) {
        for l in i.labels.iter() {
            self.by_label
                .entry((l.key.clone(), l.value.clone()))
                .or_default()
                .insert(i.id);
            self.by_key.entry(l.key.clone()).or_default().insert(i.id);
        }
    }

    /// The smallest set of identities that contains every identity `sel`
    /// may select, and the other sets they must all be in (cheap
    /// pre-filters before a full match); `None`: every identity.
    fn candidates(
        &self,
        sel: &PeerSel,
    ) -> Option<(&BTreeSet<NumericIdentity>, Vec<&BTreeSet<NumericIdentity>>)> {
        let empty = || -> &BTreeSet<NumericIdentity> {
            static EMPTY: BTreeSet<NumericIdentity> = BTreeSet::new();
            &EMPTY
        };
        match sel {
            PeerSel::Labels(s) => {
                // Every equality requirement and every Exists names a set
                // of identities a selected one must belong to.
                let mut sets: Vec<&BTreeSet<NumericIdentity>> = s
                    .requirements
                    .iter()
                    .filter_map(|r| match r.op {
                        Operator::In if r.values.len() == 1 => {
                            let v = r.values.iter().next()?;
                            Some(
                                self.by_label
                                    .get(&(r.key.key.clone(), v.clone()))
                                    .unwrap_or_else(empty),
                            )
                        }
                        Operator::Exists => Some(self.by_key.get(&r.key.key).unwrap_or_else(empty)),
                        _ => None,
                    })
                    .collect();
                sets.sort_by_key(|s| s.len());
                let mut sets = sets.into_iter();
                let first = sets.next()?;
                Some((first, sets.collect()))
            }
            // CIDR and FQDN identities (and world itself) carry the world
            // label.
            PeerSel::Cidr { .. } | PeerSel::Fqdn(_) => {
                Some((self.by_key.get("world").unwrap_or_else(empty), vec![]))
            }
            PeerSel::Wildcard => None,
        }
    }

    pub fn get(&self, id: SelId) -> &PeerSel {
        &self.sels[id]
    }

    pub fn selected(&self, id: SelId) -> &BTreeSet<NumericIdentity> {
        &self.selected[id]
    }

    pub fn len(&self) -> usize {
        self.sels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sels.is_empty()
    }

    /// Registers a selector (once) and computes what it selects.
    pub fn intern(&mut self, sel: &PeerSel, identities: &IdentityAllocator) -> SelId {
        if let Some(id) = self.ids.get(sel) {
            return *id;
        }
        let id = self.sels.len();
        let selected: BTreeSet<NumericIdentity> = match sel {
            PeerSel::Wildcard => BTreeSet::new(),
            _ => match self.candidates(sel) {
                Some((first, rest)) => first
                    .iter()
                    .filter(|i| rest.iter().all(|s| s.contains(i)))
                    .filter(|i| identities.get(**i).is_some_and(|x| peer_matches(sel, x)))
                    .copied()
                    .collect(),
                None => identities
                    .iter()
                    .filter(|i| peer_matches(sel, i))
                    .map(|i| i.id)
                    .collect(),
            },
        };
        match index_key(sel) {
            Some(k) => self.sels_by_label.entry(k).or_default().push(id),
            None if !matches!(sel, PeerSel::Wildcard) => self.unindexed.push(id),
            None => {}
        }
        self.sels.push(sel.clone());
        self.ids.insert(sel.clone(), id);
        self.selected.push(selected);
        id
    }

    /// A new identity: returns the selectors that now select it.
    pub fn identity_added(&mut self, i: &Identity) -> Vec<SelId> {
        self.index_identity(i);
        let mut cands: BTreeSet<SelId> = self.unindexed.iter().copied().collect();
        for l in i.labels.iter() {
            if let Some(v) = self.sels_by_label.get(&(l.key.clone(), l.value.clone())) {
                cands.extend(v.iter().copied());
            }
        }
        let mut out = Vec::new();
        for s in cands {
            if peer_matches(&self.sels[s], i) {
                self.selected[s].insert(i.id);
                out.push(s);
            }
        }
        out
    }

    /// An identity is gone: returns the selectors that selected it.
    pub fn identity_removed(&mut self, i: &Identity) -> Vec<SelId> {
        for l in i.labels.iter() {
            if let Some(set) = self.by_label.get_mut(&(l.key.clone(), l.value.clone())) {
                set.remove(&i.id);
            }
            if let Some(set) = self.by_key.get_mut(&l.key) {
                set.remove(&i.id);
            }
        }
        let mut out = Vec::new();
        for (s, set) in self.selected.iter_mut().enumerate() {
            if set.remove(&i.id) {
                out.push(s);
            }
        }
        out
    }
}
