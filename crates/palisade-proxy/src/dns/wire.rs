//! A small, panic-free DNS message parser and the few messages the proxy
//! builds itself (REFUSED / NXDOMAIN / FORMERR / SERVFAIL answers).
//!
//! Only what policy and learning need is decoded: the header, the
//! questions, and the answer section's A, AAAA and CNAME records (other
//! record types are skipped by length). The authority and additional
//! sections are only scanned for an OPT record (EDNS). Everything else of a
//! message is forwarded byte for byte, so EDNS options, DNSSEC records and
//! unknown types pass through untouched.
//!
//! Every read is bounds-checked; compression pointers must point backwards
//! and a name may follow at most [`MAX_POINTERS`] of them, so a hostile
//! message cannot loop or recurse.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The fixed header length.
pub const HEADER_LEN: usize = 12;
/// Compression pointers a single name may follow.
pub const MAX_POINTERS: usize = 32;
/// Longest name on the wire (RFC 1035).
pub const MAX_NAME_LEN: usize = 255;

/// Record types the proxy understands.
pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_OPT: u16 = 41;

/// Response codes.
pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_REFUSED: u8 = 5;

/// Why a message could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message shorter than the DNS header")]
    ShortHeader,
    #[error("message truncated inside {0}")]
    Truncated(&'static str),
    #[error("bad compression pointer")]
    BadPointer,
    #[error("name longer than 255 bytes")]
    NameTooLong,
    #[error("reserved label type")]
    BadLabel,
    #[error("record data length does not fit its type")]
    BadRdata,
}

/// The header fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub id: u16,
    /// Bit 15 of the flags.
    pub response: bool,
    pub opcode: u8,
    pub authoritative: bool,
    pub truncated: bool,
    pub recursion_desired: bool,
    pub recursion_available: bool,
    pub rcode: u8,
    pub qdcount: u16,
    pub ancount: u16,
    pub nscount: u16,
    pub arcount: u16,
}

impl Header {
    pub fn parse(msg: &[u8]) -> Result<Header, WireError> {
        if msg.len() < HEADER_LEN {
            return Err(WireError::ShortHeader);
        }
        let u = |i: usize| u16::from_be_bytes([msg[i], msg[i + 1]]);
        let flags = u(2);
        Ok(Header {
            id: u(0),
            response: flags & 0x8000 != 0,
            opcode: ((flags >> 11) & 0xf) as u8,
            authoritative: flags & 0x0400 != 0,
            truncated: flags & 0x0200 != 0,
            recursion_desired: flags & 0x0100 != 0,
            recursion_available: flags & 0x0080 != 0,
            rcode: (flags & 0xf) as u8,
            qdcount: u(4),
            ancount: u(6),
            nscount: u(8),
            arcount: u(10),
        })
    }
}

/// One question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    /// Lower-cased, with a trailing dot; bytes outside `[-a-z0-9_]` and
    /// dots inside labels are escaped as `\DDD`.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
}

/// The data of an answer record the proxy understands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rdata {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Cname(String),
    Other,
}

/// One answer record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub rtype: u16,
    pub class: u16,
    pub ttl: u32,
    pub data: Rdata,
}

/// A parsed message (the parts the proxy uses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub questions: Vec<Question>,
    pub answers: Vec<Record>,
    /// The EDNS UDP payload size when the message carries an OPT record.
    pub edns_udp_size: Option<u16>,
}

impl Message {
    /// Parses a whole message.
    pub fn parse(msg: &[u8]) -> Result<Message, WireError> {
        let header = Header::parse(msg)?;
        let mut pos = HEADER_LEN;
        // Each question needs at least 5 bytes: never pre-allocate more
        // than the message could hold.
        let mut questions = Vec::with_capacity(usize::from(header.qdcount).min(msg.len() / 5));
        for _ in 0..header.qdcount {
            let (name, next) = read_name(msg, pos)?;
            let fixed = msg
                .get(next..next + 4)
                .ok_or(WireError::Truncated("question"))?;
            questions.push(Question {
                name,
                qtype: u16::from_be_bytes([fixed[0], fixed[1]]),
                qclass: u16::from_be_bytes([fixed[2], fixed[3]]),
            });
            pos = next + 4;
        }
        let mut answers = Vec::with_capacity(usize::from(header.ancount).min(msg.len() / 11));
        for _ in 0..header.ancount {
            let (rec, next) = read_record(msg, pos, true)?;
            if let Some(r) = rec {
                answers.push(r);
            }
            pos = next;
        }
        let mut edns_udp_size = None;
        for i in 0..(u32::from(header.nscount) + u32::from(header.arcount)) {
            let (name_end, rtype, class) = {
                let end = skip_name(msg, pos)?;
                let f = msg
                    .get(end..end + 4)
                    .ok_or(WireError::Truncated("record"))?;
                (
                    end,
                    u16::from_be_bytes([f[0], f[1]]),
                    u16::from_be_bytes([f[2], f[3]]),
                )
            };
            if rtype == TYPE_OPT && i >= u32::from(header.nscount) && name_end == pos + 1 {
                edns_udp_size = Some(class);
            }
            let (_, next) = read_record(msg, pos, false)?;
            pos = next;
        }
        Ok(Message {
            header,
            questions,
            answers,
            edns_udp_size,
        })
    }

    /// The first question's name, if any.
    pub fn qname(&self) -> Option<&str> {
        self.questions.first().map(|q| q.name.as_str())
    }
}

/// Reads a record at `pos`; returns it (when `decode`) and the next offset.
fn read_record(msg: &[u8], pos: usize, decode: bool) -> Result<(Option<Record>, usize), WireError> {
    let (name, end) = if decode {
        read_name(msg, pos)?
    } else {
        (String::new(), skip_name(msg, pos)?)
    };
    let f = msg
        .get(end..end + 10)
        .ok_or(WireError::Truncated("record"))?;
    let rtype = u16::from_be_bytes([f[0], f[1]]);
    let class = u16::from_be_bytes([f[2], f[3]]);
    let ttl = u32::from_be_bytes([f[4], f[5], f[6], f[7]]);
    let rdlen = usize::from(u16::from_be_bytes([f[8], f[9]]));
    let start = end + 10;
    let rdata = msg
        .get(start..start + rdlen)
        .ok_or(WireError::Truncated("rdata"))?;
    if !decode {
        return Ok((None, start + rdlen));
    }
    let data = match rtype {
        TYPE_A => {
            let b: [u8; 4] = rdata.try_into().map_err(|_| WireError::BadRdata)?;
            Rdata::A(Ipv4Addr::from(b))
        }
        TYPE_AAAA => {
            let b: [u8; 16] = rdata.try_into().map_err(|_| WireError::BadRdata)?;
            Rdata::Aaaa(Ipv6Addr::from(b))
        }
        TYPE_CNAME => {
            let (target, tend) = read_name(msg, start)?;
            if tend != start + rdlen {
                return Err(WireError::BadRdata);
            }
            Rdata::Cname(target)
        }
        _ => Rdata::Other,
    };
    Ok((
        Some(Record {
            name,
            rtype,
            class,
            ttl,
            data,
        }),
        start + rdlen,
    ))
}

/// Skips a name; returns the offset after it (pointers end a name).
fn skip_name(msg: &[u8], mut pos: usize) -> Result<usize, WireError> {
    loop {
        let len = *msg.get(pos).ok_or(WireError::Truncated("name"))?;
        match len & 0xc0 {
            0x00 if len == 0 => return Ok(pos + 1),
            0x00 => {
                pos += 1 + usize::from(len);
                if pos > msg.len() {
                    return Err(WireError::Truncated("name"));
                }
            }
            0xc0 => {
                msg.get(pos + 1).ok_or(WireError::Truncated("name"))?;
                return Ok(pos + 2);
            }
            _ => return Err(WireError::BadLabel),
        }
    }
}

/// Reads a (possibly compressed) name at `pos`; returns the presentation
/// form (lower-case, trailing dot) and the offset after the name in place.
pub fn read_name(msg: &[u8], start: usize) -> Result<(String, usize), WireError> {
    let mut out = String::new();
    let mut pos = start;
    let mut end = None;
    let mut wire_len = 0usize;
    let mut pointers = 0usize;
    loop {
        let len = *msg.get(pos).ok_or(WireError::Truncated("name"))?;
        match len & 0xc0 {
            0x00 if len == 0 => {
                wire_len += 1;
                if wire_len > MAX_NAME_LEN {
                    return Err(WireError::NameTooLong);
                }
                if out.is_empty() {
                    out.push('.');
                }
                return Ok((out, end.unwrap_or(pos + 1)));
            }
            0x00 => {
                let label = msg
                    .get(pos + 1..pos + 1 + usize::from(len))
                    .ok_or(WireError::Truncated("name"))?;
                wire_len += 1 + label.len();
                if wire_len > MAX_NAME_LEN {
                    return Err(WireError::NameTooLong);
                }
                for &b in label {
                    let c = b.to_ascii_lowercase();
                    if c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'*' {
                        out.push(char::from(c));
                    } else {
                        out.push_str(&format!("\\{c:03}"));
                    }
                }
                out.push('.');
                pos += 1 + label.len();
            }
            0xc0 => {
                let lo = *msg.get(pos + 1).ok_or(WireError::Truncated("name"))?;
                let target = (usize::from(len & 0x3f) << 8) | usize::from(lo);
                // Only backwards pointers: no loops.
                if target >= pos || pointers >= MAX_POINTERS {
                    return Err(WireError::BadPointer);
                }
                pointers += 1;
                if end.is_none() {
                    end = Some(pos + 2);
                }
                pos = target;
            }
            _ => return Err(WireError::BadLabel),
        }
    }
}

/// The offset just after the question section (for building answers that
/// echo the questions).
pub fn questions_end(msg: &[u8]) -> Result<usize, WireError> {
    let h = Header::parse(msg)?;
    let mut pos = HEADER_LEN;
    for _ in 0..h.qdcount {
        pos = skip_name(msg, pos)? + 4;
        if pos > msg.len() {
            return Err(WireError::Truncated("question"));
        }
    }
    Ok(pos)
}

/// An answer built from `query` with only the header and questions: QR
/// set, the query's id, opcode and RD, RA set, `rcode`. When the query
/// carried EDNS, an OPT record (payload 1232) is appended (RFC 6891 6.1.1).
/// A query whose questions cannot be read gets FORMERR with no question.
pub fn error_answer(query: &[u8], rcode: u8) -> Vec<u8> {
    let Ok(h) = Header::parse(query) else {
        return Vec::new();
    };
    let (qend, qdcount, rcode, edns) = match questions_end(query) {
        Ok(end) => {
            let edns = Message::parse(query)
                .ok()
                .and_then(|m| m.edns_udp_size)
                .is_some();
            (end, h.qdcount, rcode, edns)
        }
        Err(_) => (HEADER_LEN, 0, RCODE_FORMERR, false),
    };
    let mut out = Vec::with_capacity(qend + 11);
    out.extend_from_slice(&h.id.to_be_bytes());
    let mut flags: u16 =
        0x8000 | (u16::from(h.opcode & 0xf) << 11) | 0x0080 | u16::from(rcode & 0xf);
    if h.recursion_desired {
        flags |= 0x0100;
    }
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&qdcount.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&u16::from(edns).to_be_bytes());
    out.extend_from_slice(query.get(HEADER_LEN..qend).unwrap_or_default());
    if edns {
        // root name, type OPT, class = payload size, ttl 0, rdlen 0
        out.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    }
    // Copied questions may hold pointers into the query's header, which
    // differs here: never send something that does not parse.
    if qdcount > 0 && Message::parse(&out).is_err() {
        out.truncate(HEADER_LEN);
        out[3] = (out[3] & 0xf0) | RCODE_FORMERR;
        out[4..12].fill(0);
    }
    out
}

/// Writes a name in wire form (for tests, fuzzing and the bench's query
/// generator). Labels longer than 63 bytes are cut.
pub fn write_name(out: &mut Vec<u8>, name: &str) {
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        let b = label.as_bytes();
        let n = b.len().min(63);
        out.push(n as u8);
        out.extend_from_slice(&b[..n]);
    }
    out.push(0);
}

/// A query for `name`/`qtype` with RD set, optionally with an OPT record.
pub fn build_query(id: u16, name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&0x0100u16.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&u16::from(edns.is_some()).to_be_bytes());
    write_name(&mut out, name);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    if let Some(size) = edns {
        out.extend_from_slice(&[0, 0, 41]);
        out.extend_from_slice(&size.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    }
    out
}

/// The addresses an answer carries, per address, with the smallest TTL
/// along the chain that led to it, and the names of that chain (the query
/// name, CNAME targets and the owner names of the address records).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnswerIps {
    pub names: Vec<String>,
    pub ips: Vec<(IpAddr, u32)>,
    pub cnames: Vec<String>,
}

/// Extracts what a NOERROR answer teaches about `qname`: every A/AAAA
/// record whose owner is `qname` or reachable from it through CNAMEs.
pub fn answer_ips(msg: &Message, qname: &str) -> AnswerIps {
    let mut out = AnswerIps {
        names: vec![qname.to_string()],
        ..Default::default()
    };
    // Follow the CNAME chain (bounded by the number of records).
    let mut chain_ttl = u32::MAX;
    let mut current = qname.to_string();
    for _ in 0..msg.answers.len() {
        let next = msg.answers.iter().find_map(|r| match &r.data {
            Rdata::Cname(t) if r.name == current => Some((t.clone(), r.ttl)),
            _ => None,
        });
        let Some((target, ttl)) = next else { break };
        if out.names.contains(&target) {
            break;
        }
        chain_ttl = chain_ttl.min(ttl);
        out.cnames.push(target.clone());
        out.names.push(target.clone());
        current = target;
    }
    for r in &msg.answers {
        if !out.names.contains(&r.name) {
            continue;
        }
        let ip = match r.data {
            Rdata::A(a) => IpAddr::V4(a),
            Rdata::Aaaa(a) => IpAddr::V6(a),
            _ => continue,
        };
        let ttl = r.ttl.min(chain_ttl);
        match out.ips.iter_mut().find(|(i, _)| *i == ip) {
            Some(e) => e.1 = e.1.max(ttl),
            None => out.ips.push((ip, ttl)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(query: &[u8], records: &[(&str, u16, u32, Vec<u8>)], tc: bool) -> Vec<u8> {
        let mut out = query.to_vec();
        out[2] |= 0x80;
        if tc {
            out[2] |= 0x02;
        }
        out[6..8].copy_from_slice(&(records.len() as u16).to_be_bytes());
        out[10..12].copy_from_slice(&[0, 0]);
        let qend = questions_end(query).expect("query");
        out.truncate(qend);
        for (name, t, ttl, data) in records {
            if *name == "@" {
                out.extend_from_slice(&[0xc0, 12]);
            } else {
                write_name(&mut out, name);
            }
            out.extend_from_slice(&t.to_be_bytes());
            out.extend_from_slice(&1u16.to_be_bytes());
            out.extend_from_slice(&ttl.to_be_bytes());
            out.extend_from_slice(&(data.len() as u16).to_be_bytes());
            out.extend_from_slice(data);
        }
        out
    }

    #[test]
    fn parses_a_query_with_edns() {
        let q = build_query(7, "API.Example.com", TYPE_A, Some(1232));
        let m = Message::parse(&q).expect("valid");
        assert_eq!(m.header.id, 7);
        assert!(m.header.recursion_desired && !m.header.response);
        assert_eq!(m.qname(), Some("api.example.com."));
        assert_eq!(m.edns_udp_size, Some(1232));
    }

    #[test]
    fn follows_cnames_and_compression() {
        let q = build_query(1, "www.example.com", TYPE_A, None);
        let mut cname = Vec::new();
        write_name(&mut cname, "edge.cdn.net");
        let r = answer(
            &q,
            &[
                ("@", TYPE_CNAME, 300, cname),
                ("edge.cdn.net", TYPE_A, 60, vec![192, 0, 2, 1]),
                ("edge.cdn.net", TYPE_A, 30, vec![192, 0, 2, 2]),
                ("unrelated.net", TYPE_A, 30, vec![192, 0, 2, 9]),
            ],
            false,
        );
        let m = Message::parse(&r).expect("valid");
        assert!(m.header.response);
        let a = answer_ips(&m, "www.example.com.");
        assert_eq!(a.cnames, vec!["edge.cdn.net.".to_string()]);
        assert_eq!(
            a.ips,
            vec![
                ("192.0.2.1".parse().expect("ip"), 60),
                ("192.0.2.2".parse().expect("ip"), 30)
            ]
        );
    }

    #[test]
    fn rejects_pointer_loops_and_forward_pointers() {
        let mut q = build_query(1, "a", TYPE_A, None);
        // question name replaced by a pointer to itself
        q.truncate(HEADER_LEN);
        q.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(Message::parse(&q), Err(WireError::BadPointer));
    }

    #[test]
    fn error_answers_echo_the_question() {
        let q = build_query(0x1234, "denied.example.com", TYPE_AAAA, Some(4096));
        let r = error_answer(&q, RCODE_REFUSED);
        let m = Message::parse(&r).expect("valid");
        assert_eq!(m.header.id, 0x1234);
        assert!(m.header.response && m.header.recursion_desired);
        assert_eq!(m.header.rcode, RCODE_REFUSED);
        assert_eq!(m.qname(), Some("denied.example.com."));
        assert_eq!(m.questions[0].qtype, TYPE_AAAA);
        assert_eq!(m.edns_udp_size, Some(1232));
        assert!(error_answer(&q[..5], RCODE_REFUSED).is_empty());
    }

    #[test]
    fn odd_bytes_are_escaped() {
        let mut q = build_query(1, "x", TYPE_A, None);
        q.truncate(HEADER_LEN);
        q.extend_from_slice(&[3, b'a', b'.', 0xff, 0, 0, 1, 0, 1]);
        let m = Message::parse(&q).expect("valid");
        assert_eq!(m.qname(), Some("a\\046\\255."));
    }
}
