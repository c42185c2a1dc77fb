//! The responses the proxy writes itself, built with kafka-protocol: a
//! denied request gets a well-formed response of the same API and version
//! carrying the authorization error for every topic and partition it named
//! (TOPIC_AUTHORIZATION_FAILED, 29), or the API's own error field for APIs
//! without topics (GROUP_AUTHORIZATION_FAILED 30 for group APIs,
//! CLUSTER_AUTHORIZATION_FAILED 31 otherwise). It also clamps the broker's
//! ApiVersions answer to the versions the proxy can read.

use super::request::{ParsedRequest, readable_versions};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersionsResponse;
use kafka_protocol::messages::fetch_response::{
    FetchResponse, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{MetadataResponse, MetadataResponseTopic};
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponse, OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponse, OffsetFetchResponseGroup, OffsetFetchResponsePartition,
    OffsetFetchResponsePartitions, OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::produce_response::{
    PartitionProduceResponse, ProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{
    ApiKey, FindCoordinatorResponse, GroupId, HeartbeatResponse, InitProducerIdResponse,
    JoinGroupResponse, LeaveGroupResponse, ListGroupsResponse, ResponseHeader, SyncGroupResponse,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// Kafka error codes the proxy answers with.
pub const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
pub const GROUP_AUTHORIZATION_FAILED: i16 = 30;
pub const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;

/// A response could not be built (an API or version kafka-protocol cannot
/// encode): the proxy closes the connection instead.
#[derive(Debug, thiserror::Error)]
#[error("cannot build a {api} v{version} response: {message}")]
pub struct ResponseError {
    pub api: i16,
    pub version: i16,
    pub message: String,
}

fn topic(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

/// A whole response frame (size prefix, header, body).
pub fn frame<T: Encodable>(
    api_key: i16,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> Result<Vec<u8>, ResponseError> {
    let err = |m: String| ResponseError {
        api: api_key,
        version,
        message: m,
    };
    let key = ApiKey::try_from(api_key).map_err(|_| err("unknown API key".into()))?;
    let hv = key.response_header_version(version);
    let mut buf = BytesMut::with_capacity(64);
    buf.put_i32(0);
    let mut h = ResponseHeader::default();
    h.correlation_id = correlation_id;
    h.encode(&mut buf, hv).map_err(|e| err(e.to_string()))?;
    body.encode(&mut buf, version)
        .map_err(|e| err(e.to_string()))?;
    let len = i32::try_from(buf.len() - 4).map_err(|_| err("too long".into()))?;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.to_vec())
}

/// The error a denied request of this API carries.
pub fn denial_code(api_key: i16) -> i16 {
    match api_key {
        0 | 1 | 2 | 3 | 8 | 9 => TOPIC_AUTHORIZATION_FAILED,
        10 | 11 | 12 | 13 | 14 | 15 | 16 | 42 => GROUP_AUTHORIZATION_FAILED,
        _ => CLUSTER_AUTHORIZATION_FAILED,
    }
}

/// The response to a denied request.
pub fn denial(req: &ParsedRequest) -> Result<Vec<u8>, ResponseError> {
    let (k, v, corr) = (req.api_key, req.api_version, req.correlation_id);
    let code = denial_code(k);
    match k {
        0 => {
            let mut r = ProduceResponse::default();
            for t in &req.topics {
                let mut tr = TopicProduceResponse::default();
                tr.name = topic(&t.name);
                for p in &t.partitions {
                    let mut pr = PartitionProduceResponse::default();
                    pr.index = *p;
                    pr.error_code = code;
                    pr.base_offset = -1;
                    pr.log_append_time_ms = -1;
                    pr.log_start_offset = -1;
                    tr.partition_responses.push(pr);
                }
                r.responses.push(tr);
            }
            frame(k, v, corr, &r)
        }
        1 => {
            let mut r = FetchResponse::default();
            for t in &req.topics {
                let mut tr = FetchableTopicResponse::default();
                tr.topic = topic(&t.name);
                for p in &t.partitions {
                    let mut pd = PartitionData::default();
                    pd.partition_index = *p;
                    pd.error_code = code;
                    pd.high_watermark = -1;
                    pd.last_stable_offset = -1;
                    pd.log_start_offset = -1;
                    pd.records = Some(Bytes::new());
                    tr.partitions.push(pd);
                }
                r.responses.push(tr);
            }
            frame(k, v, corr, &r)
        }
        2 => {
            let mut r = ListOffsetsResponse::default();
            for t in &req.topics {
                let mut tr = ListOffsetsTopicResponse::default();
                tr.name = topic(&t.name);
                for p in &t.partitions {
                    let mut pr = ListOffsetsPartitionResponse::default();
                    pr.partition_index = *p;
                    pr.error_code = code;
                    pr.timestamp = -1;
                    pr.offset = -1;
                    pr.leader_epoch = -1;
                    tr.partitions.push(pr);
                }
                r.topics.push(tr);
            }
            frame(k, v, corr, &r)
        }
        3 => {
            let mut r = MetadataResponse::default();
            r.controller_id = (-1).into();
            for t in &req.topics {
                let mut tr = MetadataResponseTopic::default();
                tr.name = Some(topic(&t.name));
                tr.error_code = code;
                r.topics.push(tr);
            }
            frame(k, v, corr, &r)
        }
        8 => {
            let mut r = OffsetCommitResponse::default();
            for t in &req.topics {
                let mut tr = OffsetCommitResponseTopic::default();
                tr.name = topic(&t.name);
                for p in &t.partitions {
                    let mut pr = OffsetCommitResponsePartition::default();
                    pr.partition_index = *p;
                    pr.error_code = code;
                    tr.partitions.push(pr);
                }
                r.topics.push(tr);
            }
            frame(k, v, corr, &r)
        }
        9 => {
            let mut r = OffsetFetchResponse::default();
            if v <= 7 {
                r.error_code = if v >= 2 { code } else { 0 };
                for t in &req.topics {
                    let mut tr = OffsetFetchResponseTopic::default();
                    tr.name = topic(&t.name);
                    for p in &t.partitions {
                        let mut pr = OffsetFetchResponsePartition::default();
                        pr.partition_index = *p;
                        pr.committed_offset = -1;
                        pr.error_code = code;
                        tr.partitions.push(pr);
                    }
                    r.topics.push(tr);
                }
            } else {
                for (g, ts) in &req.groups {
                    let mut gr = OffsetFetchResponseGroup::default();
                    gr.group_id = GroupId(StrBytes::from_string(g.clone()));
                    gr.error_code = code;
                    for t in ts {
                        let mut tr = OffsetFetchResponseTopics::default();
                        tr.name = topic(&t.name);
                        for p in &t.partitions {
                            let mut pr = OffsetFetchResponsePartitions::default();
                            pr.partition_index = *p;
                            pr.committed_offset = -1;
                            pr.error_code = code;
                            tr.partitions.push(pr);
                        }
                        gr.topics.push(tr);
                    }
                    r.groups.push(gr);
                }
            }
            frame(k, v, corr, &r)
        }
        10 => {
            let mut r = FindCoordinatorResponse::default();
            r.error_code = code;
            r.node_id = (-1).into();
            r.port = -1;
            frame(k, v, corr, &r)
        }
        11 => {
            let mut r = JoinGroupResponse::default();
            r.error_code = code;
            r.generation_id = -1;
            frame(k, v, corr, &r)
        }
        12 => {
            let mut r = HeartbeatResponse::default();
            r.error_code = code;
            frame(k, v, corr, &r)
        }
        13 => {
            let mut r = LeaveGroupResponse::default();
            r.error_code = code;
            frame(k, v, corr, &r)
        }
        14 => {
            let mut r = SyncGroupResponse::default();
            r.error_code = code;
            frame(k, v, corr, &r)
        }
        16 => {
            let mut r = ListGroupsResponse::default();
            r.error_code = code;
            frame(k, v, corr, &r)
        }
        18 => {
            let mut r = ApiVersionsResponse::default();
            r.error_code = code;
            frame(k, v, corr, &r)
        }
        22 => {
            let mut r = InitProducerIdResponse::default();
            r.error_code = code;
            r.producer_id = (-1).into();
            r.producer_epoch = -1;
            frame(k, v, corr, &r)
        }
        _ => Err(ResponseError {
            api: k,
            version: v,
            message: "no denial response for this API".into(),
        }),
    }
}

/// Rewrites a broker's ApiVersions response (frame without the size
/// prefix) so that the APIs whose topics the proxy reads advertise only
/// versions it can read. `None`: leave it as it is.
pub fn clamp_api_versions(body: &[u8], version: i16) -> Option<Vec<u8>> {
    let mut b = Bytes::copy_from_slice(body);
    // header v0: the correlation id
    if b.len() < 4 {
        return None;
    }
    let corr = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let _ = b.split_to(4);
    let mut r = ApiVersionsResponse::decode(&mut b, version).ok()?;
    if r.error_code != 0 {
        return None;
    }
    let mut changed = false;
    r.api_keys.retain_mut(|k| {
        let Some((lo, hi)) = readable_versions(k.api_key) else {
            return true;
        };
        let (nlo, nhi) = (k.min_version.max(lo), k.max_version.min(hi));
        if (nlo, nhi) != (k.min_version, k.max_version) {
            changed = true;
        }
        k.min_version = nlo;
        k.max_version = nhi;
        nlo <= nhi
    });
    if !changed {
        return None;
    }
    frame(18, version, corr, &r).ok()
}
