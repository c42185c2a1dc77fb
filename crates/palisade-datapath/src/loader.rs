//! Loading, pinning/adoption and attachment: the [`Datapath`].
//!
//! # Pinning and adoption
//!
//! Every map is pinned under [`DatapathConfig::pin_root`] by name
//! (`endpoints`, `endpoints_fast`, `ipcache`, `policy`, `policy_revision`, `conntrack`,
//! `counters`, `counters_fast`, `events`, `events_lost`),
//! using aya 0.14's `EbpfLoader::map_pin_path`: when a pin exists aya opens
//! it and relocates the freshly loaded programs against it (state adopted,
//! never flushed); otherwise it creates the map and pins it. Before that,
//! existing pins are checked against this build's map type and key/value
//! sizes and rejected with [`DatapathError::MapIncompatible`]. Capacities
//! (`max_entries`) are not checked: a pinned map keeps the capacity it was
//! created with until its pin is removed. For the `events` ring that is
//! its size in bytes; the reader maps the ring with the kernel's size, not
//! the object file's (a warning names an adopted ring of another size).
//!
//! Programs are loaded anew by every [`Datapath`]. Attachments are TCX links
//! pinned at `<pin_root>/links/<ifindex>-in` (from_container, TCX ingress)
//! and `<ifindex>-eg` (to_container, TCX egress), so enforcement survives the
//! process. [`Datapath::attach`] on an interface that already has a pinned
//! link atomically swaps the link's program (`BPF_LINK_UPDATE`) instead of
//! attaching a second one: no gap, no double attachment.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, MapType, PerCpuArray, PerCpuHashMap};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};

use crate::conntrack::{CtEntry, CtKey, GcStats, RawCtEntry, RawCtKey};
use crate::counters::{CounterEntry, EndpointCounters, RawCounterKey, RawCounterValue};
use crate::endpoint::{EndpointInfo, RawEndpointInfo};
use crate::error::{DatapathError, Result};
use crate::events::{EVENTS_RING_BYTES, EventReader, Verdict};
use crate::ipcache::Ipv4Prefix;
use crate::policy::{Direction, PolicyKey, PolicyValue, RawPolicyEntry, RawPolicyKeyData};

/// Default pin root of a real agent.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/palisade";
/// Default per-endpoint policy capacity (Cilium's `bpf-policy-map-max`).
pub const DEFAULT_POLICY_CAPACITY: usize = 16384;
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// How to load the datapath.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatapathConfig {
    /// Directory on bpffs holding the pinned maps and `links/`.
    pub pin_root: PathBuf,
    /// Maximum policy entries per endpoint; writes beyond it are rejected.
    pub policy_capacity_per_endpoint: usize,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        DatapathConfig {
            pin_root: PathBuf::from(DEFAULT_PIN_ROOT),
            policy_capacity_per_endpoint: DEFAULT_POLICY_CAPACITY,
        }
    }
}

/// The two per-endpoint programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Program {
    /// Pod egress: TCX ingress of the host-side veth.
    FromContainer,
    /// Pod ingress: TCX egress of the host-side veth.
    ToContainer,
}

impl Program {
    /// The program's symbol name in the object.
    pub fn name(self) -> &'static str {
        match self {
            Program::FromContainer => "from_container",
            Program::ToContainer => "to_container",
        }
    }

    fn attach_type(self) -> TcAttachType {
        match self {
            Program::FromContainer => TcAttachType::Ingress,
            Program::ToContainer => TcAttachType::Egress,
        }
    }

    fn link_suffix(self) -> &'static str {
        match self {
            Program::FromContainer => "in",
            Program::ToContainer => "eg",
        }
    }
}

/// (name, type, key size, value size) of every map this build uses.
const MAPS: [(&str, MapType, u32, u32); 10] = [
    ("endpoints", MapType::Hash, 4, 12),
    ("endpoints_fast", MapType::Array, 4, 12),
    ("ipcache", MapType::LpmTrie, 8, 4),
    ("policy", MapType::LpmTrie, 16, 12),
    ("conntrack", MapType::LruHash, 20, 56),
    ("policy_revision", MapType::Array, 4, 8),
    ("counters", MapType::PerCpuHash, 8, 16),
    ("counters_fast", MapType::PerCpuArray, 4, 16),
    ("events", MapType::RingBuf, 0, 0),
    ("events_lost", MapType::PerCpuArray, 4, 8),
];

/// The loaded datapath: programs, the pinned maps and typed writers.
///
/// Writers take `&mut self`; the policy writer keeps an in-memory copy of
/// every endpoint's entries (built from the live map when loading) to
/// enforce the per-endpoint capacity and compute deltas, so one `Datapath`
/// should be the single writer of the policy map.
pub struct Datapath {
    config: DatapathConfig,
    ebpf: Ebpf,
    endpoints: HashMap<MapData, u32, RawEndpointInfo>,
    endpoints_fast: Array<MapData, RawEndpointInfo>,
    ipcache: LpmTrie<MapData, u32, u32>,
    policy: LpmTrie<MapData, RawPolicyKeyData, RawPolicyEntry>,
    conntrack: HashMap<MapData, RawCtKey, RawCtEntry>,
    counters: PerCpuHashMap<MapData, RawCounterKey, RawCounterValue>,
    counters_fast: PerCpuArray<MapData, RawCounterValue>,
    events: Option<MapData>,
    events_lost: PerCpuArray<MapData, u64>,
    policy_revision: Array<MapData, u64>,
    policy_shadow: BTreeMap<u32, BTreeMap<PolicyKey, PolicyValue>>,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<Map> {
    ebpf.take_map(name).ok_or(DatapathError::MapMissing(name))
}

/// Mounts bpffs on /sys/fs/bpf if `pin_root` lives there and it is not mounted.
fn ensure_bpffs(pin_root: &Path) -> Result<()> {
    let bpf_root = Path::new("/sys/fs/bpf");
    if !pin_root.starts_with(bpf_root) {
        return Ok(()); // the caller chose another bpffs mount
    }
    let c =
        CString::new("/sys/fs/bpf").map_err(|e| DatapathError::InvalidArgument(e.to_string()))?;
    // SAFETY: zeroed statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if rc == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    std::fs::create_dir_all(bpf_root).map_err(|e| DatapathError::io("creating /sys/fs/bpf", e))?;
    let fstype = CString::new("bpf").map_err(|e| DatapathError::InvalidArgument(e.to_string()))?;
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            c.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(DatapathError::io(
            "mounting bpffs on /sys/fs/bpf",
            std::io::Error::last_os_error(),
        ));
    }
    tracing::info!("mounted bpffs on /sys/fs/bpf");
    Ok(())
}

/// Rejects a pinned map whose shape differs from what this build needs.
fn check_pinned(path: &Path, name: &'static str, ty: MapType, key: u32, value: u32) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let data = MapData::from_pin(path).map_err(|e| DatapathError::map("open pinned", name, e))?;
    let info = data
        .info()
        .map_err(|e| DatapathError::map("info", name, e))?;
    let found_ty = info
        .map_type()
        .map_err(|e| DatapathError::map("info", name, e))?;
    let key_ok = ty == MapType::RingBuf || info.key_size() == key;
    let value_ok = ty == MapType::RingBuf || info.value_size() == value;
    if found_ty != ty || !key_ok || !value_ok {
        return Err(DatapathError::MapIncompatible {
            name,
            path: path.to_path_buf(),
            found: format!("{found_ty:?}/{}/{}", info.key_size(), info.value_size()),
            expected: format!("{ty:?}/{key}/{value}"),
        });
    }
    if ty == MapType::RingBuf && info.max_entries() != EVENTS_RING_BYTES {
        // Adopted as it is, like every pinned map whose capacity changed:
        // replacing it would drop the events it still holds.
        tracing::warn!(
            path = %path.display(),
            pinned_bytes = info.max_entries(),
            build_bytes = EVENTS_RING_BYTES,
            "the pinned event ring is not this build's size; adopted as it is, \
             unread events included (a new pin root gets this build's size)"
        );
    }
    Ok(())
}

fn ifname_of(ifindex: u32) -> Result<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as required.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return Err(DatapathError::io(
            format!("no interface with ifindex {ifindex} in this network namespace"),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Ok(name.to_string_lossy().into_owned())
}

/// The ifindex of `ifname` in the calling thread's network namespace.
pub fn ifindex_of(ifname: &str) -> Result<u32> {
    let c = CString::new(ifname)
        .map_err(|_| DatapathError::InvalidArgument(format!("interface name {ifname:?}")))?;
    // SAFETY: valid C string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(DatapathError::InterfaceNotFound(ifname.to_string()));
    }
    Ok(idx)
}

impl Datapath {
    /// Loads the programs and creates the maps pinned under the pin root, or
    /// adopts the maps already pinned there (keeping their contents).
    /// Mounts bpffs on /sys/fs/bpf if needed.
    pub fn load_or_adopt(config: DatapathConfig) -> Result<Self> {
        ensure_bpffs(&config.pin_root)?;
        let links = config.pin_root.join("links");
        std::fs::create_dir_all(&links)
            .map_err(|e| DatapathError::io(format!("creating {}", links.display()), e))?;
        for (name, ty, key, value) in MAPS {
            check_pinned(&config.pin_root.join(name), name, ty, key, value)?;
        }

        let mut loader = EbpfLoader::new();
        let pins: Vec<(&'static str, PathBuf)> = MAPS
            .iter()
            .map(|(name, ..)| (*name, config.pin_root.join(name)))
            .collect();
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .load(crate::BPF_OBJECT)
            .map_err(|e| DatapathError::Load(Box::new(e)))?;

        for program in [Program::FromContainer, Program::ToContainer] {
            let name = program.name();
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| {
                    DatapathError::program(
                        "find",
                        name,
                        aya::programs::ProgramError::UnexpectedProgramType,
                    )
                })?
                .try_into()
                .map_err(|e| DatapathError::program("convert", name, e))?;
            prog.load()
                .map_err(|e| DatapathError::program("load", name, e))?;
        }

        let endpoints = HashMap::try_from(take_map(&mut ebpf, "endpoints")?)
            .map_err(|e| DatapathError::map("open", "endpoints", e))?;
        let endpoints_fast = Array::try_from(take_map(&mut ebpf, "endpoints_fast")?)
            .map_err(|e| DatapathError::map("open", "endpoints_fast", e))?;
        let ipcache = LpmTrie::try_from(take_map(&mut ebpf, "ipcache")?)
            .map_err(|e| DatapathError::map("open", "ipcache", e))?;
        let policy = LpmTrie::try_from(take_map(&mut ebpf, "policy")?)
            .map_err(|e| DatapathError::map("open", "policy", e))?;
        let conntrack = HashMap::try_from(take_map(&mut ebpf, "conntrack")?)
            .map_err(|e| DatapathError::map("open", "conntrack", e))?;
        let counters = PerCpuHashMap::try_from(take_map(&mut ebpf, "counters")?)
            .map_err(|e| DatapathError::map("open", "counters", e))?;
        let counters_fast = PerCpuArray::try_from(take_map(&mut ebpf, "counters_fast")?)
            .map_err(|e| DatapathError::map("open", "counters_fast", e))?;
        let Map::RingBuf(events) = take_map(&mut ebpf, "events")? else {
            return Err(DatapathError::MapMissing("events"));
        };
        // The ring as the kernel has it: aya would map the ring with the
        // object file's size, which an adopted ring need not have.
        let events = events
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| DatapathError::io("duplicating the events ring fd", e))
            .and_then(|fd| {
                MapData::from_fd(fd).map_err(|e| DatapathError::map("open", "events", e))
            })?;
        let events_lost = PerCpuArray::try_from(take_map(&mut ebpf, "events_lost")?)
            .map_err(|e| DatapathError::map("open", "events_lost", e))?;

        let policy_revision = Array::try_from(take_map(&mut ebpf, "policy_revision")?)
            .map_err(|e| DatapathError::map("open", "policy_revision", e))?;
        let mut dp = Datapath {
            config,
            ebpf,
            endpoints,
            endpoints_fast,
            ipcache,
            policy,
            conntrack,
            counters,
            counters_fast,
            events: Some(events),
            events_lost,
            policy_revision,
            policy_shadow: BTreeMap::new(),
        };
        // the fast copy follows the hash (e.g. pins written by an older build)
        for (ifindex, info) in dp.endpoints()? {
            dp.set_endpoint_fast(ifindex, Some(info))?;
        }
        for (key, value) in dp.scan_policy(None)? {
            dp.policy_shadow
                .entry(key.ep_id)
                .or_default()
                .insert(key, value);
        }
        tracing::debug!(
            pin_root = %dp.config.pin_root.display(),
            endpoints_with_policy = dp.policy_shadow.len(),
            "datapath loaded"
        );
        Ok(dp)
    }

    /// The configuration this datapath was loaded with.
    pub fn config(&self) -> &DatapathConfig {
        &self.config
    }

    fn program_mut(&mut self, program: Program) -> Result<&mut SchedClassifier> {
        let name = program.name();
        self.ebpf
            .program_mut(name)
            .ok_or_else(|| {
                DatapathError::program("find", name, aya::programs::ProgramError::NotLoaded)
            })?
            .try_into()
            .map_err(|e| DatapathError::program("convert", name, e))
    }

    /// The fd of a loaded program (for `BPF_PROG_TEST_RUN`).
    pub(crate) fn program_raw_fd(&self, program: Program) -> Result<i32> {
        let name = program.name();
        let prog: &SchedClassifier = self
            .ebpf
            .program(name)
            .ok_or_else(|| {
                DatapathError::program("find", name, aya::programs::ProgramError::NotLoaded)
            })?
            .try_into()
            .map_err(|e| DatapathError::program("convert", name, e))?;
        let fd = prog
            .fd()
            .map_err(|e| DatapathError::program("fd", name, e))?;
        Ok(fd.as_fd().as_raw_fd())
    }

    /// Pin path of one attachment.
    pub fn link_pin_path(&self, ifindex: u32, program: Program) -> PathBuf {
        self.config
            .pin_root
            .join("links")
            .join(format!("{ifindex}-{}", program.link_suffix()))
    }

    /// Attaches both programs with TCX to the host-side veth `ifindex` in the
    /// calling thread's network namespace and pins the links. If pinned links
    /// exist (e.g. from a previous agent run) their program is swapped
    /// atomically to this datapath's instead: never a second attachment.
    pub fn attach(&mut self, ifindex: u32) -> Result<()> {
        for program in [Program::FromContainer, Program::ToContainer] {
            self.attach_one(ifindex, program)?;
        }
        Ok(())
    }

    /// [`Datapath::attach`] by interface name; returns the ifindex.
    pub fn attach_by_name(&mut self, ifname: &str) -> Result<u32> {
        let ifindex = ifindex_of(ifname)?;
        self.attach(ifindex)?;
        Ok(ifindex)
    }

    fn attach_one(&mut self, ifindex: u32, program: Program) -> Result<()> {
        let path = self.link_pin_path(ifindex, program);
        let name = program.name();
        if path.exists() {
            match self.update_pinned_link(&path, program) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    // e.g. ENOLINK: the interface the link was on is gone
                    tracing::warn!(path = %path.display(), error = %e, "stale pinned link; re-attaching");
                    std::fs::remove_file(&path).map_err(|e| {
                        DatapathError::io(format!("removing stale pin {}", path.display()), e)
                    })?;
                }
            }
        }
        let ifname = ifname_of(ifindex)?;
        let prog = self.program_mut(program)?;
        let id = prog
            .attach_with_options(
                &ifname,
                program.attach_type(),
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(|e| DatapathError::program("attach (tcx)", name, e))?;
        let link = prog
            .take_link(id)
            .map_err(|e| DatapathError::program("take link", name, e))?;
        let fd_link = FdLink::try_from(link).map_err(|e| DatapathError::Pin {
            path: path.clone(),
            message: format!("link of {name} is not an fd link: {e}"),
        })?;
        // The PinnedLink is dropped right away: our fd closes, the pin keeps the link.
        fd_link.pin(&path).map_err(|e| DatapathError::Pin {
            path: path.clone(),
            message: format!("pinning the {name} link: {e}"),
        })?;
        Ok(())
    }

    fn update_pinned_link(&mut self, path: &Path, program: Program) -> Result<()> {
        let name = program.name();
        let pinned = PinnedLink::from_pin(path).map_err(|e| DatapathError::Pin {
            path: path.to_path_buf(),
            message: format!("opening pinned link: {e}"),
        })?;
        let link = SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|e| {
            DatapathError::Pin {
                path: path.to_path_buf(),
                message: format!("pinned object is not a TCX link: {e}"),
            }
        })?;
        let prog = self.program_mut(program)?;
        let id = prog
            .attach_to_link(link)
            .map_err(|e| DatapathError::program("update pinned link of", name, e))?;
        // drop our fd of the link: the pin keeps it attached
        drop(
            prog.take_link(id)
                .map_err(|e| DatapathError::program("take link", name, e))?,
        );
        Ok(())
    }

    /// True if both links of `ifindex` are pinned.
    pub fn is_attached(&self, ifindex: u32) -> bool {
        [Program::FromContainer, Program::ToContainer]
            .iter()
            .all(|p| self.link_pin_path(ifindex, *p).exists())
    }

    /// Ifindexes with pinned attachments.
    pub fn attached_ifindexes(&self) -> Result<Vec<u32>> {
        let dir = self.config.pin_root.join("links");
        let rd = std::fs::read_dir(&dir)
            .map_err(|e| DatapathError::io(format!("reading {}", dir.display()), e))?;
        let mut out: Vec<u32> = rd
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.split_once('-').and_then(|(i, _)| i.parse().ok())
            })
            .collect();
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Detaches both programs from `ifindex` (removes the pinned links).
    pub fn detach(&mut self, ifindex: u32) -> Result<()> {
        for program in [Program::FromContainer, Program::ToContainer] {
            let path = self.link_pin_path(ifindex, program);
            if !path.exists() {
                continue;
            }
            let pinned = PinnedLink::from_pin(&path).map_err(|e| DatapathError::Pin {
                path: path.clone(),
                message: format!("opening pinned link: {e}"),
            })?;
            // unpin, then the returned FdLink is dropped: the link goes away
            drop(
                pinned
                    .unpin()
                    .map_err(|e| DatapathError::io(format!("unpinning {}", path.display()), e))?,
            );
        }
        Ok(())
    }

    /// Bumps the global policy revision: established connections re-check
    /// their verdict against the current maps on their next packet. Every
    /// writer of this type calls it after a change; call it after editing
    /// the pinned maps by other means.
    pub fn bump_policy_revision(&mut self) -> Result<()> {
        let cur = self
            .policy_revision
            .get(&0, 0)
            .map_err(|e| DatapathError::map("lookup", "policy_revision", e))?;
        self.policy_revision
            .set(0, cur.wrapping_add(1), 0)
            .map_err(|e| DatapathError::map("update", "policy_revision", e))
    }

    /// The current global policy revision.
    pub fn policy_revision(&self) -> Result<u64> {
        self.policy_revision
            .get(&0, 0)
            .map_err(|e| DatapathError::map("lookup", "policy_revision", e))
    }

    // ----- endpoints -----

    /// Adds or updates the endpoint behind host-side veth `ifindex`.
    pub fn set_endpoint(&mut self, ifindex: u32, info: EndpointInfo) -> Result<()> {
        self.endpoints
            .insert(ifindex, info.to_raw(), 0)
            .map_err(|e| DatapathError::map("insert", "endpoints", e))?;
        self.set_endpoint_fast(ifindex, Some(info))?;
        self.bump_policy_revision()
    }

    /// Writes (or clears) `ifindex`'s entry in the `endpoints_fast` array.
    fn set_endpoint_fast(&mut self, ifindex: u32, info: Option<EndpointInfo>) -> Result<()> {
        if ifindex >= ENDPOINTS_FAST_MAX {
            return Ok(());
        }
        let raw = match info {
            Some(info) => {
                let mut raw = info.to_raw();
                raw.flags |= EP_PRESENT;
                raw
            }
            None => RawEndpointInfo {
                ep_id: 0,
                identity: 0,
                flags: 0,
            },
        };
        self.endpoints_fast
            .set(ifindex, raw, 0)
            .map_err(|e| DatapathError::map("update", "endpoints_fast", e))
    }

    /// Removes the endpoint behind `ifindex` (absent is not an error).
    pub fn remove_endpoint(&mut self, ifindex: u32) -> Result<()> {
        self.set_endpoint_fast(ifindex, None)?;
        match self.endpoints.remove(&ifindex) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => self.bump_policy_revision(),
            Err(e) => Err(DatapathError::map("remove", "endpoints", e)),
        }
    }

    /// All endpoints: (ifindex, info).
    pub fn endpoints(&self) -> Result<Vec<(u32, EndpointInfo)>> {
        self.endpoints
            .iter()
            .map(|r| {
                r.map(|(k, v)| (k, EndpointInfo::from_raw(v)))
                    .map_err(|e| DatapathError::map("iterate", "endpoints", e))
            })
            .collect()
    }

    // ----- ipcache -----

    /// Maps `prefix` to `identity`.
    pub fn ipcache_upsert(&mut self, prefix: Ipv4Prefix, identity: u32) -> Result<()> {
        self.ipcache
            .insert(&prefix.to_raw(), identity, 0)
            .map_err(|e| DatapathError::map("insert", "ipcache", e))?;
        self.bump_policy_revision()
    }

    /// Removes `prefix` (absent is not an error).
    pub fn ipcache_remove(&mut self, prefix: Ipv4Prefix) -> Result<()> {
        match self.ipcache.remove(&prefix.to_raw()) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => self.bump_policy_revision(),
            Err(e) => Err(DatapathError::map("remove", "ipcache", e)),
        }
    }

    /// All ipcache entries.
    pub fn ipcache_entries(&self) -> Result<Vec<(Ipv4Prefix, u32)>> {
        self.ipcache
            .iter()
            .map(|r| {
                r.map(|(k, v)| (Ipv4Prefix::from_raw(k), v))
                    .map_err(|e| DatapathError::map("iterate", "ipcache", e))
            })
            .collect()
    }

    // ----- policy -----

    /// Applies a policy delta for endpoint `ep_id`: writes `adds` (insert or
    /// overwrite), then deletes `removes` that are not re-added. Programs are
    /// never reloaded. The whole delta is validated first (keys must be valid
    /// and belong to `ep_id`; the result must fit the per-endpoint capacity)
    /// and nothing is written if it fails. If the kernel rejects a write
    /// midway, the entries already written are rolled back.
    pub fn policy_apply(
        &mut self,
        ep_id: u32,
        adds: &[(PolicyKey, PolicyValue)],
        removes: &[PolicyKey],
    ) -> Result<()> {
        for key in adds.iter().map(|(k, _)| k).chain(removes.iter()) {
            key.validate()?;
            if key.ep_id != ep_id {
                return Err(DatapathError::InvalidPolicy(format!(
                    "key {key:?} is for endpoint {}, not {ep_id}",
                    key.ep_id
                )));
            }
        }
        let current = self.policy_shadow.get(&ep_id).cloned().unwrap_or_default();
        let mut next = current.clone();
        for key in removes {
            next.remove(key);
        }
        for (key, value) in adds {
            next.insert(*key, *value);
        }
        let capacity = self.config.policy_capacity_per_endpoint;
        if next.len() > capacity {
            return Err(DatapathError::PolicyCapacity {
                ep_id,
                capacity,
                current: current.len(),
                requested: next.len(),
            });
        }

        // adds first (never a transient deny), then removes
        let mut written: Vec<PolicyKey> = Vec::new();
        for (key, value) in adds {
            if current.get(key) == Some(value) {
                continue;
            }
            if let Err(e) = self
                .policy
                .insert(&key.to_raw(), value.to_raw(key.prefix), 0)
            {
                self.policy_rollback(&written, &current);
                return Err(DatapathError::map("insert", "policy", e));
            }
            written.push(*key);
        }
        for key in removes {
            if next.contains_key(key) || !current.contains_key(key) {
                continue;
            }
            match self.policy.remove(&key.to_raw()) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => {
                    self.policy_rollback(&written, &current);
                    return Err(DatapathError::map("remove", "policy", e));
                }
            }
        }
        if next.is_empty() {
            self.policy_shadow.remove(&ep_id);
        } else {
            self.policy_shadow.insert(ep_id, next);
        }
        // after the writes: established flows re-check on their next packet
        self.bump_policy_revision()
    }

    fn policy_rollback(
        &mut self,
        written: &[PolicyKey],
        before: &BTreeMap<PolicyKey, PolicyValue>,
    ) {
        for key in written {
            let res = match before.get(key) {
                Some(v) => self.policy.insert(&key.to_raw(), v.to_raw(key.prefix), 0),
                None => self.policy.remove(&key.to_raw()),
            };
            if let Err(e) = res {
                tracing::error!(?key, error = %e, "policy rollback failed");
            }
        }
        if let Err(e) = self.bump_policy_revision() {
            tracing::error!(error = %e, "bumping the policy revision after a rollback failed");
        }
    }

    /// Makes endpoint `ep_id`'s policy exactly `desired` by computing and
    /// applying the delta against what this datapath last wrote.
    pub fn policy_sync(&mut self, ep_id: u32, desired: &[(PolicyKey, PolicyValue)]) -> Result<()> {
        let current = self.policy_shadow.get(&ep_id).cloned().unwrap_or_default();
        let wanted: BTreeMap<PolicyKey, PolicyValue> = desired.iter().copied().collect();
        let adds: Vec<(PolicyKey, PolicyValue)> = wanted
            .iter()
            .filter(|(k, v)| current.get(k) != Some(v))
            .map(|(k, v)| (*k, *v))
            .collect();
        let removes: Vec<PolicyKey> = current
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        self.policy_apply(ep_id, &adds, &removes)
    }

    /// Endpoint `ep_id`'s entries as read back from the live kernel map.
    pub fn policy_entries(&self, ep_id: u32) -> Result<Vec<(PolicyKey, PolicyValue)>> {
        self.scan_policy(Some(ep_id))
    }

    /// Number of entries this datapath holds for `ep_id`.
    pub fn policy_len(&self, ep_id: u32) -> usize {
        self.policy_shadow.get(&ep_id).map_or(0, |m| m.len())
    }

    fn scan_policy(&self, ep_id: Option<u32>) -> Result<Vec<(PolicyKey, PolicyValue)>> {
        let mut out = Vec::new();
        for r in self.policy.iter() {
            let (k, v) = r.map_err(|e| DatapathError::map("iterate", "policy", e))?;
            let key = PolicyKey::from_raw(k.prefix_len(), k.data());
            if ep_id.is_none_or(|id| id == key.ep_id) {
                out.push((key, PolicyValue::from_raw(v)));
            }
        }
        out.sort_by_key(|(k, _)| *k);
        Ok(out)
    }

    // ----- counters -----

    /// Endpoint `ep_id`'s counters, summed over CPUs.
    pub fn counters(&self, ep_id: u32) -> Result<EndpointCounters> {
        let mut entries = Vec::new();
        for r in self.counters.iter() {
            let (k, values) = r.map_err(|e| DatapathError::map("iterate", "counters", e))?;
            if k.ep_id != ep_id {
                continue;
            }
            let (packets, bytes) = values
                .iter()
                .fold((0u64, 0u64), |(p, b), v| (p + v.packets, b + v.bytes));
            add_counter(
                &mut entries,
                k.direction,
                k.verdict,
                k.reason,
                packets,
                bytes,
            );
        }
        if ep_id < COUNTERS_FAST_EPS {
            for slot in 0..COUNTERS_SLOTS {
                let values = self
                    .counters_fast
                    .get(&(ep_id * COUNTERS_SLOTS + slot), 0)
                    .map_err(|e| DatapathError::map("read", "counters_fast", e))?;
                let (packets, bytes) = values
                    .iter()
                    .fold((0u64, 0u64), |(p, b), v| (p + v.packets, b + v.bytes));
                if packets == 0 && bytes == 0 {
                    continue;
                }
                let (direction, verdict, reason) = fast_slot_key(slot);
                add_counter(&mut entries, direction, verdict, reason, packets, bytes);
            }
        }
        Ok(EndpointCounters { entries })
    }

    // ----- conntrack -----

    /// All conntrack entries.
    pub fn conntrack_entries(&self) -> Result<Vec<(CtKey, CtEntry)>> {
        self.conntrack
            .iter()
            .map(|r| {
                r.map(|(k, v)| (k.to_key(), v.to_entry()))
                    .map_err(|e| DatapathError::map("iterate", "conntrack", e))
            })
            .collect()
    }

    /// Deletes the conntrack entries expired at `now_ns` (`CLOCK_MONOTONIC`,
    /// see [`crate::conntrack::monotonic_now_ns`]). Call periodically.
    pub fn gc_conntrack(&mut self, now_ns: u64) -> Result<GcStats> {
        let mut stats = GcStats::default();
        let mut expired = Vec::new();
        for r in self.conntrack.iter() {
            match r {
                Ok((k, v)) => {
                    stats.scanned += 1;
                    if v.to_entry().expired(now_ns) {
                        expired.push(k);
                    }
                }
                // an entry evicted or deleted while iterating
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(e) => return Err(DatapathError::map("iterate", "conntrack", e)),
            }
        }
        for k in expired {
            match self.conntrack.remove(&k) {
                Ok(()) => stats.deleted += 1,
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(DatapathError::map("remove", "conntrack", e)),
            }
        }
        Ok(stats)
    }

    // ----- events -----

    /// Events the datapath could not emit because the ring buffer was full,
    /// summed over CPUs (see [`EventReader::events_lost`] for other processes).
    pub fn events_lost(&self) -> Result<u64> {
        sum_events_lost(&self.events_lost)
    }

    /// Takes the event reader (once per datapath; see
    /// [`EventReader::open_pinned`] for other processes).
    pub fn event_reader(&mut self) -> Result<EventReader> {
        self.events
            .take()
            .map(|ring| EventReader::new(ring, &self.config.pin_root))
            .ok_or(DatapathError::EventReaderTaken)?
    }
}

/// Endpoints with `ep_id` below this count in `counters_fast` (`bpf/counters.h`).
const COUNTERS_FAST_EPS: u32 = 4096;
/// Slots per endpoint in `counters_fast`: direction * 4 + kind.
const COUNTERS_SLOTS: u32 = 8;

/// (direction, verdict, reason) of a `counters_fast` slot.
fn fast_slot_key(slot: u32) -> (u8, u8, u16) {
    let direction = (slot / 4) as u8;
    let (verdict, reason) = match slot % 4 {
        0 => (0, 0),
        1 => (1, crate::DROP_POLICY),
        2 => (1, crate::DROP_POLICY_DENY),
        _ => (2, 0),
    };
    (direction, verdict, reason)
}

/// Adds a row, merging it with an existing row of the same key.
fn add_counter(
    entries: &mut Vec<CounterEntry>,
    direction: u8,
    verdict: u8,
    reason: u16,
    packets: u64,
    bytes: u64,
) {
    let direction = Direction::from_u8(direction);
    let verdict = Verdict::from_u8(verdict);
    if let Some(e) = entries
        .iter_mut()
        .find(|e| e.direction == direction && e.verdict == verdict && e.reason == reason)
    {
        e.packets += packets;
        e.bytes += bytes;
    } else {
        entries.push(CounterEntry {
            direction,
            verdict,
            reason,
            packets,
            bytes,
        });
    }
}

/// Sum over CPUs of the `events_lost` counter.
pub(crate) fn sum_events_lost(map: &PerCpuArray<MapData, u64>) -> Result<u64> {
    let values = map
        .get(&0, 0)
        .map_err(|e| DatapathError::map("read", "events_lost", e))?;
    Ok(values.iter().sum())
}

/// Ifindexes below this have a copy in `endpoints_fast` (`bpf/endpoint.h`).
const ENDPOINTS_FAST_MAX: u32 = 65536;
/// Flag of a valid `endpoints_fast` entry.
const EP_PRESENT: u32 = 0x8000_0000;
