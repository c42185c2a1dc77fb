//! A panic-free reader of what Kafka policy needs from a request frame:
//! the header (API key and version, correlation id, client id) and, for
//! the APIs that name topics (Produce, Fetch, ListOffsets, Metadata,
//! OffsetCommit, OffsetFetch), every topic with its partitions, plus
//! Produce's `acks` (`acks = 0` has no response).
//!
//! The kafka-protocol crate knows every schema, but its decoders size
//! vectors from the claimed element count (`Vec::with_capacity(n)` with `n`
//! read from the wire), so a 20-byte frame claiming 2^31 topics makes the
//! allocator abort the process. Untrusted client bytes are therefore read
//! here, where every count is checked against the bytes left; kafka-protocol
//! builds the responses (and the proptests check this reader against its
//! encoders).

use kafka_protocol::messages::ApiKey;

/// Why a request could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("request truncated in {0}")]
    Truncated(&'static str),
    #[error("negative or oversized length in {0}")]
    BadLength(&'static str),
    #[error("invalid UTF-8 in {0}")]
    BadString(&'static str),
}

/// One topic of a request and the partitions it names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicPartitions {
    pub name: String,
    pub partitions: Vec<i32>,
}

/// What a request frame carries for policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedRequest {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
    pub client_id: String,
    /// The topics the request names (empty for APIs without topics and for
    /// "all topics" metadata requests).
    pub topics: Vec<TopicPartitions>,
    /// Whether `topics` was read from the body (false: an API or version
    /// this reader does not decode).
    pub topics_read: bool,
    /// Produce `acks` (`Some(0)`: the broker sends no response).
    pub acks: Option<i16>,
    /// OffsetFetch v8+: the groups (each with its topics) in order.
    pub groups: Vec<(String, Vec<TopicPartitions>)>,
}

impl ParsedRequest {
    pub fn topic_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .topics
            .iter()
            .map(|t| t.name.clone())
            .chain(
                self.groups
                    .iter()
                    .flat_map(|(_, ts)| ts.iter().map(|t| t.name.clone())),
            )
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Whether the broker answers this request.
    pub fn expects_response(&self) -> bool {
        !(self.api_key == 0 && self.acks == Some(0))
    }
}

/// The versions whose topics this reader decodes (and kafka-protocol can
/// encode a response for); the proxy clamps ApiVersions answers to them.
pub fn readable_versions(api_key: i16) -> Option<(i16, i16)> {
    match api_key {
        0 => Some((3, 12)),
        1 => Some((4, 12)),
        2 => Some((1, 8)),
        3 => Some((0, 12)),
        8 => Some((2, 9)),
        9 => Some((1, 9)),
        _ => None,
    }
}

/// APIs that name topics this reader does not decode: their topic list is
/// unknown, so a topic-restricted rule must not admit them.
pub fn names_unread_topics(api_key: i16) -> bool {
    matches!(
        api_key,
        19 | 20 | 21 | 23 | 24 | 28 | 32 | 33 | 37 | 44 | 47
    )
}

/// The placeholder topic for requests whose topics were not read.
pub const UNREAD_TOPIC: &str = "<topics not read>";

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], RequestError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(RequestError::BadLength(what))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(RequestError::Truncated(what))?;
        self.pos = end;
        Ok(s)
    }
    fn left(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }
    fn i8(&mut self, w: &'static str) -> Result<i8, RequestError> {
        Ok(self.take(1, w)?[0] as i8)
    }
    fn i16(&mut self, w: &'static str) -> Result<i16, RequestError> {
        let b = self.take(2, w)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self, w: &'static str) -> Result<i32, RequestError> {
        let b = self.take(4, w)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn skip(&mut self, n: usize, w: &'static str) -> Result<(), RequestError> {
        self.take(n, w).map(|_| ())
    }
    fn uvarint(&mut self, w: &'static str) -> Result<u64, RequestError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.take(1, w)?[0];
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(RequestError::BadLength(w))
    }
    /// A string (compact when `flexible`); `None` for null.
    fn string(&mut self, flexible: bool, w: &'static str) -> Result<Option<String>, RequestError> {
        let len: i64 = if flexible {
            self.uvarint(w)? as i64 - 1
        } else {
            i64::from(self.i16(w)?)
        };
        if len < 0 {
            return Ok(None);
        }
        let n = usize::try_from(len).map_err(|_| RequestError::BadLength(w))?;
        let b = self.take(n, w)?;
        std::str::from_utf8(b)
            .map(|s| Some(s.to_string()))
            .map_err(|_| RequestError::BadString(w))
    }
    fn bytes(&mut self, flexible: bool, w: &'static str) -> Result<(), RequestError> {
        let len: i64 = if flexible {
            self.uvarint(w)? as i64 - 1
        } else {
            i64::from(self.i32(w)?)
        };
        if len < 0 {
            return Ok(());
        }
        self.skip(
            usize::try_from(len).map_err(|_| RequestError::BadLength(w))?,
            w,
        )
    }
    /// An array length (`None` for null), never more than the bytes left.
    fn array(&mut self, flexible: bool, w: &'static str) -> Result<Option<usize>, RequestError> {
        let len: i64 = if flexible {
            self.uvarint(w)? as i64 - 1
        } else {
            i64::from(self.i32(w)?)
        };
        if len < 0 {
            return Ok(None);
        }
        let n = usize::try_from(len).map_err(|_| RequestError::BadLength(w))?;
        if n > self.left() {
            return Err(RequestError::BadLength(w));
        }
        Ok(Some(n))
    }
    fn tags(&mut self, flexible: bool) -> Result<(), RequestError> {
        if !flexible {
            return Ok(());
        }
        let n = self.uvarint("tagged fields")?;
        if n > self.left() as u64 {
            return Err(RequestError::BadLength("tagged fields"));
        }
        for _ in 0..n {
            self.uvarint("tag")?;
            let size = self.uvarint("tag size")?;
            self.skip(
                usize::try_from(size).map_err(|_| RequestError::BadLength("tag"))?,
                "tag",
            )?;
        }
        Ok(())
    }
}

/// Reads a request (the frame without its 4-byte size prefix).
pub fn parse_request(frame: &[u8]) -> Result<ParsedRequest, RequestError> {
    let mut c = Cursor { buf: frame, pos: 0 };
    let api_key = c.i16("header")?;
    let api_version = c.i16("header")?;
    let correlation_id = c.i32("header")?;
    let mut out = ParsedRequest {
        api_key,
        api_version,
        correlation_id,
        ..Default::default()
    };
    let header_version = ApiKey::try_from(api_key)
        .map(|k| k.request_header_version(api_version))
        .unwrap_or(1);
    if header_version >= 1 {
        out.client_id = c.string(false, "client id")?.unwrap_or_default();
    }
    if header_version >= 2 {
        c.tags(true)?;
    }
    let readable =
        readable_versions(api_key).is_some_and(|(lo, hi)| (lo..=hi).contains(&api_version));
    if !readable {
        if names_unread_topics(api_key) || readable_versions(api_key).is_some() {
            out.topics.push(TopicPartitions {
                name: UNREAD_TOPIC.into(),
                partitions: Vec::new(),
            });
        }
        return Ok(out);
    }
    let v = api_version;
    match api_key {
        0 => produce(&mut c, v, &mut out)?,
        1 => fetch(&mut c, v, &mut out)?,
        2 => list_offsets(&mut c, v, &mut out)?,
        3 => metadata(&mut c, v, &mut out)?,
        8 => offset_commit(&mut c, v, &mut out)?,
        9 => offset_fetch(&mut c, v, &mut out)?,
        _ => {}
    }
    out.topics_read = true;
    Ok(out)
}

/// `[name, [partition + rest]]` where `rest` reads the remainder of one
/// partition entry.
fn topics(
    c: &mut Cursor<'_>,
    flex: bool,
    mut rest: impl FnMut(&mut Cursor<'_>) -> Result<(), RequestError>,
) -> Result<Vec<TopicPartitions>, RequestError> {
    let n = c.array(flex, "topics")?.unwrap_or(0);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let name = c.string(flex, "topic name")?.unwrap_or_default();
        let np = c.array(flex, "partitions")?.unwrap_or(0);
        let mut partitions = Vec::with_capacity(np);
        for _ in 0..np {
            partitions.push(c.i32("partition")?);
            rest(c)?;
            c.tags(flex)?;
        }
        c.tags(flex)?;
        out.push(TopicPartitions { name, partitions });
    }
    Ok(out)
}

fn produce(c: &mut Cursor<'_>, v: i16, out: &mut ParsedRequest) -> Result<(), RequestError> {
    let flex = v >= 9;
    c.string(flex, "transactional id")?;
    out.acks = Some(c.i16("acks")?);
    c.i32("timeout")?;
    out.topics = topics(c, flex, |c| c.bytes(flex, "records"))?;
    Ok(())
}

fn fetch(c: &mut Cursor<'_>, v: i16, out: &mut ParsedRequest) -> Result<(), RequestError> {
    let flex = v >= 12;
    c.i32("replica id")?;
    c.i32("max wait")?;
    c.i32("min bytes")?;
    c.i32("max bytes")?;
    c.i8("isolation level")?;
    if v >= 7 {
        c.i32("session id")?;
        c.i32("session epoch")?;
    }
    out.topics = topics(c, flex, |c| {
        if v >= 9 {
            c.i32("current leader epoch")?;
        }
        c.skip(8, "fetch offset")?;
        if v >= 12 {
            c.i32("last fetched epoch")?;
        }
        if v >= 5 {
            c.skip(8, "log start offset")?;
        }
        c.i32("partition max bytes")?;
        Ok(())
    })?;
    Ok(())
}

fn list_offsets(c: &mut Cursor<'_>, v: i16, out: &mut ParsedRequest) -> Result<(), RequestError> {
    let flex = v >= 6;
    c.i32("replica id")?;
    if v >= 2 {
        c.i8("isolation level")?;
    }
    out.topics = topics(c, flex, |c| {
        if v >= 4 {
            c.i32("current leader epoch")?;
        }
        c.skip(8, "timestamp")
    })?;
    Ok(())
}

fn metadata(c: &mut Cursor<'_>, v: i16, out: &mut ParsedRequest) -> Result<(), RequestError> {
    let flex = v >= 9;
    let Some(n) = c.array(flex, "topics")? else {
        return Ok(()); // null: every topic
    };
    for _ in 0..n {
        if v >= 10 {
            c.skip(16, "topic id")?;
        }
        let name = c.string(flex, "topic name")?;
        c.tags(flex)?;
        out.topics.push(TopicPartitions {
            // a topic named only by id cannot match a topic rule
            name: name.unwrap_or_else(|| UNREAD_TOPIC.into()),
            partitions: Vec::new(),
        });
    }
    Ok(())
}

fn offset_commit(c: &mut Cursor<'_>, v: i16, out: &mut ParsedRequest) -> Result<(), RequestError> {
    let flex = v >= 8;
    c.string(flex, "group id")?;
    c.i32("generation id")?;
    c.string(flex, "member id")?;
    if v >= 7 {
        c.string(flex, "group instance id")?;
    }
    if (2..=4).contains(&v) {
        c.skip(8, "retention time")?;
    }
    out.topics = topics(c, flex, |c| {
        c.skip(8, "committed offset")?;
        if v >= 6 {
            c.i32("committed leader epoch")?;
        }
        c.string(flex, "committed metadata")?;
        Ok(())
    })?;
    Ok(())
}

fn offset_fetch_topics(
    c: &mut Cursor<'_>,
    flex: bool,
) -> Result<Vec<TopicPartitions>, RequestError> {
    let Some(n) = c.array(flex, "topics")? else {
        return Ok(Vec::new()); // null: every committed topic
    };
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let name = c.string(flex, "topic name")?.unwrap_or_default();
        let np = c.array(flex, "partitions")?.unwrap_or(0);
        let mut partitions = Vec::with_capacity(np);
        for _ in 0..np {
            partitions.push(c.i32("partition")?);
        }
        c.tags(flex)?;
        out.push(TopicPartitions { name, partitions });
    }
    Ok(out)
}

fn offset_fetch(c: &mut Cursor<'_>, v: i16, out: &mut ParsedRequest) -> Result<(), RequestError> {
    let flex = v >= 6;
    if v <= 7 {
        c.string(flex, "group id")?;
        out.topics = offset_fetch_topics(c, flex)?;
        return Ok(());
    }
    let n = c.array(flex, "groups")?.unwrap_or(0);
    for _ in 0..n {
        let group = c.string(flex, "group id")?.unwrap_or_default();
        if v >= 9 {
            c.string(flex, "member id")?;
            c.i32("member epoch")?;
        }
        let ts = offset_fetch_topics(c, flex)?;
        c.tags(flex)?;
        out.groups.push((group, ts));
    }
    Ok(())
}
