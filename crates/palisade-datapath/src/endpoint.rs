//! The endpoints map: host-side veth ifindex -> endpoint.
//!
//! Raw layout (`bpf/endpoint.h`): key `u32` ifindex, value
//! `{ep_id u32, identity u32, flags u32}` with flags bit 0 = enforce ingress,
//! bit 1 = enforce egress. Packets on an attached interface with no endpoint
//! entry are treated as an enforced endpoint 0 without policy (default deny).

/// Flag bit: ingress (to the endpoint) is enforced.
pub const ENFORCE_INGRESS: u32 = 0x1;
/// Flag bit: egress (from the endpoint) is enforced.
pub const ENFORCE_EGRESS: u32 = 0x2;

/// One endpoint as the datapath sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EndpointInfo {
    /// Endpoint id (the `ep_id` of its policy and conntrack keys).
    pub ep_id: u32,
    /// The endpoint's own security identity.
    pub identity: u32,
    /// Whether ingress policy is enforced (else everything is allowed in).
    pub enforce_ingress: bool,
    /// Whether egress policy is enforced (else everything is allowed out).
    pub enforce_egress: bool,
}

impl EndpointInfo {
    pub(crate) fn to_raw(self) -> RawEndpointInfo {
        let mut flags = 0;
        if self.enforce_ingress {
            flags |= ENFORCE_INGRESS;
        }
        if self.enforce_egress {
            flags |= ENFORCE_EGRESS;
        }
        RawEndpointInfo {
            ep_id: self.ep_id,
            identity: self.identity,
            flags,
        }
    }

    pub(crate) fn from_raw(r: RawEndpointInfo) -> Self {
        EndpointInfo {
            ep_id: r.ep_id,
            identity: r.identity,
            enforce_ingress: r.flags & ENFORCE_INGRESS != 0,
            enforce_egress: r.flags & ENFORCE_EGRESS != 0,
        }
    }
}

/// Raw `struct endpoint_info`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawEndpointInfo {
    pub ep_id: u32,
    pub identity: u32,
    pub flags: u32,
}
// SAFETY: repr(C), no padding, all bit patterns valid.
unsafe impl aya::Pod for RawEndpointInfo {}
