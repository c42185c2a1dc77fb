//! Bounded property tests of the DNS and Kafka parsers: random bytes and
//! mutations of real messages never panic; the Kafka reader recovers the
//! topics and partitions of requests encoded by kafka-protocol, for every
//! version it claims to read. (The cargo-fuzz targets in `fuzz/` run the
//! same entry points without bounds.)

use bytes::{BufMut, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
};
use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequest, OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafka_protocol::messages::{ApiKey, RequestHeader, TopicName};
use kafka_protocol::protocol::{Encodable, StrBytes};
use palisade_proxy::dns::wire::{self, Message};
use palisade_proxy::kafka::request::{parse_request, readable_versions};
use palisade_proxy::kafka::response::denial;
use proptest::prelude::*;

fn dns_seeds() -> Vec<Vec<u8>> {
    let mut v = vec![
        wire::build_query(1, "api.example.com", wire::TYPE_A, None),
        wire::build_query(2, "x.y.z.example.org", wire::TYPE_AAAA, Some(1232)),
    ];
    // an answer with a compressed CNAME chain and two A records
    let mut a = wire::build_query(3, "www.example.com", wire::TYPE_A, None);
    a[2] |= 0x80;
    a[7] = 3;
    a.extend_from_slice(&[
        0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 6, 3, b'c', b'd', b'n', 0xc0, 16,
    ]);
    for last in [1u8, 2] {
        a.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 192, 0, 2, last]);
    }
    v.push(a);
    v
}

fn frame<T: Encodable>(key: ApiKey, v: i16, body: &T) -> Vec<u8> {
    let mut buf = BytesMut::new();
    let mut h = RequestHeader::default();
    h.request_api_key = key as i16;
    h.request_api_version = v;
    h.correlation_id = 42;
    h.client_id = Some(StrBytes::from_static_str("prop"));
    h.encode(&mut buf, key.request_header_version(v))
        .expect("header");
    body.encode(&mut buf, v).expect("body");
    buf.to_vec()
}

fn tn(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// Requests of every readable API and version with `topics`.
fn kafka_requests(topics: &[(String, Vec<i32>)]) -> Vec<(i16, i16, Vec<u8>)> {
    let mut out = Vec::new();
    for key in [
        ApiKey::Produce,
        ApiKey::Fetch,
        ApiKey::ListOffsets,
        ApiKey::Metadata,
        ApiKey::OffsetCommit,
    ] {
        let Some((lo, hi)) = readable_versions(key as i16) else {
            continue;
        };
        for v in lo..=hi {
            let bytes = match key {
                ApiKey::Produce => {
                    let mut r = ProduceRequest::default();
                    r.acks = -1;
                    for (t, ps) in topics {
                        let mut td = TopicProduceData::default();
                        td.name = tn(t);
                        for p in ps {
                            let mut pd = PartitionProduceData::default();
                            pd.index = *p;
                            pd.records = Some(bytes::Bytes::from_static(b"records"));
                            td.partition_data.push(pd);
                        }
                        r.topic_data.push(td);
                    }
                    frame(key, v, &r)
                }
                ApiKey::Fetch => {
                    let mut r = FetchRequest::default();
                    for (t, ps) in topics {
                        let mut ft = FetchTopic::default();
                        ft.topic = tn(t);
                        for p in ps {
                            let mut fp = FetchPartition::default();
                            fp.partition = *p;
                            ft.partitions.push(fp);
                        }
                        r.topics.push(ft);
                    }
                    frame(key, v, &r)
                }
                ApiKey::ListOffsets => {
                    let mut r = ListOffsetsRequest::default();
                    for (t, ps) in topics {
                        let mut lt = ListOffsetsTopic::default();
                        lt.name = tn(t);
                        for p in ps {
                            let mut lp = ListOffsetsPartition::default();
                            lp.partition_index = *p;
                            lt.partitions.push(lp);
                        }
                        r.topics.push(lt);
                    }
                    frame(key, v, &r)
                }
                ApiKey::Metadata => {
                    let mut r = MetadataRequest::default();
                    r.topics = Some(
                        topics
                            .iter()
                            .map(|(t, _)| {
                                let mut m = MetadataRequestTopic::default();
                                m.name = Some(tn(t));
                                m
                            })
                            .collect(),
                    );
                    frame(key, v, &r)
                }
                _ => {
                    let mut r = OffsetCommitRequest::default();
                    for (t, ps) in topics {
                        let mut ct = OffsetCommitRequestTopic::default();
                        ct.name = tn(t);
                        for p in ps {
                            let mut cp = OffsetCommitRequestPartition::default();
                            cp.partition_index = *p;
                            ct.partitions.push(cp);
                        }
                        r.topics.push(ct);
                    }
                    frame(key, v, &r)
                }
            };
            out.push((key as i16, v, bytes));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn dns_random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Message::parse(&bytes);
        let _ = wire::error_answer(&bytes, wire::RCODE_REFUSED);
        if let Ok(m) = Message::parse(&bytes) && let Some(q) = m.qname() {
            let _ = wire::answer_ips(&m, q);
        }
    }

    #[test]
    fn dns_mutated_messages_never_panic(
        seed in 0usize..3,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let mut m = dns_seeds()[seed].clone();
        for (pos, byte, op) in edits {
            let i = pos % (m.len() + 1);
            match op {
                0 if i < m.len() => m[i] = byte,
                1 => m.insert(i, byte),
                _ => m.truncate(i),
            }
        }
        if let Ok(msg) = Message::parse(&m) {
            let a = wire::answer_ips(&msg, msg.qname().unwrap_or("."));
            prop_assert!(a.ips.len() <= msg.answers.len());
        }
        let e = wire::error_answer(&m, wire::RCODE_REFUSED);
        if !e.is_empty() {
            prop_assert!(Message::parse(&e).is_ok(), "error answers are valid messages");
        }
    }

    #[test]
    fn kafka_random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(p) = parse_request(&bytes) {
            let _ = denial(&p);
        }
    }

    #[test]
    fn kafka_reader_agrees_with_kafka_protocol(
        topics in proptest::collection::vec(("[a-z][a-z0-9._-]{0,20}", proptest::collection::vec(0i32..64, 0..4)), 0..4),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3),
    ) {
        for (key, v, bytes) in kafka_requests(&topics) {
            let p = parse_request(&bytes).map_err(|e| TestCaseError::fail(format!("{key} v{v}: {e}")))?;
            prop_assert_eq!((p.api_key, p.api_version, p.correlation_id), (key, v, 42));
            prop_assert_eq!(p.client_id.as_str(), "prop");
            prop_assert!(p.topics_read);
            let got: Vec<(String, Vec<i32>)> = p.topics.iter().map(|t| (t.name.clone(), t.partitions.clone())).collect();
            let want: Vec<(String, Vec<i32>)> = if key == 3 {
                topics.iter().map(|(t, _)| (t.clone(), vec![])).collect()
            } else {
                topics.clone()
            };
            prop_assert_eq!(got, want, "{} v{}", key, v);
            // every denial of a readable request can be encoded
            prop_assert!(denial(&p).is_ok(), "{} v{}", key, v);
            // and mutations of it never panic
            let mut m = bytes.clone();
            for (pos, b) in &edits {
                let i = pos % m.len();
                m[i] = *b;
            }
            if let Ok(p) = parse_request(&m) {
                let _ = denial(&p);
            }
        }
    }
}

/// The reason the proxy does not let kafka-protocol decode client bytes:
/// a tiny frame that claims 2^31-1 topics. The reader rejects it without
/// allocating.
#[test]
fn huge_claimed_counts_are_rejected_cheaply() {
    let mut b = BytesMut::new();
    b.put_i16(0); // produce
    b.put_i16(3);
    b.put_i32(1);
    b.put_i16(-1); // client id null
    b.put_i16(-1); // transactional id null
    b.put_i16(1);
    b.put_i32(1000);
    b.put_i32(i32::MAX); // topics
    assert!(parse_request(&b).is_err());
}
