//! The Kafka proxy end to end (root; unique namespaces removed on drop):
//! kcat (Debian `kcat`, librdkafka) in client pods, a broker in a pod, the
//! proxy in the node namespace behind the real TPROXY redirect.
//!
//! The broker is a protocol-accurate minimal broker written here with
//! kafka-protocol (ApiVersions, Metadata, Produce, Fetch with long polling,
//! ListOffsets; one partition per topic, offsets assigned by rewriting
//! the record batches' base offsets). No real broker runs here: Apache
//! Kafka needs a JVM (not packaged), and building `tansu` from crates.io
//! did not finish within the 15-minute budget on this 2-core machine.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::{ApiVersion, ApiVersionsResponse};
use kafka_protocol::messages::fetch_response::{
    FetchResponse, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponse, MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafka_protocol::messages::produce_response::{
    PartitionProduceResponse, ProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{
    ApiKey, FetchRequest, ListOffsetsRequest, MetadataRequest, RequestHeader, ResponseHeader,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes, decode_request_header_from_buffer};
use palisade_datapath::netns::{self, Pod};
use palisade_datapath::testenv::TestEnv;
use palisade_proxy::kafka::{KafkaConfig, KafkaProxy, KafkaProxyOptions, KafkaRecord};
use palisade_proxy::{L7Verdict, PolicyFeed, dns::Sink};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {kubernetes.io/metadata.name: default}}
---
apiVersion: v1
kind: Pod
metadata: {name: kafka, namespace: default, labels: {app: kafka}}
spec: {nodeName: node-1, containers: [{name: main, image: kafka}]}
status: {podIP: @KAFKA@}
---
apiVersion: v1
kind: Pod
metadata: {name: producer, namespace: default, labels: {app: producer}}
spec: {nodeName: node-1, containers: [{name: main, image: app}]}
status: {podIP: @PRODUCER@}
---
apiVersion: v1
kind: Pod
metadata: {name: consumer, namespace: default, labels: {app: consumer}}
spec: {nodeName: node-1, containers: [{name: main, image: app}]}
status: {podIP: @CONSUMER@}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: kafka-ingress, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: kafka}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: producer}}]
      toPorts:
        - ports: [{port: "9092", protocol: TCP}]
          rules:
            kafka:
              - role: produce
                topic: orders
    - fromEndpoints: [{matchLabels: {app: consumer}}]
      toPorts:
        - ports: [{port: "9092", protocol: TCP}]
          rules:
            kafka:
              - role: consume
                topic: orders
"#;

// ---------------------------------------------------------------- broker

#[derive(Default)]
struct Log {
    /// topic -> batches (base offset, next offset after it, bytes)
    topics: HashMap<String, Vec<(i64, i64, Bytes)>>,
}

impl Log {
    fn end(&self, t: &str) -> i64 {
        self.topics
            .get(t)
            .and_then(|b| b.last())
            .map(|b| b.1)
            .unwrap_or(0)
    }
    /// Appends record batches (magic 2), assigning offsets; returns the
    /// base offset.
    fn append(&mut self, t: &str, mut records: Bytes) -> Option<i64> {
        let base = self.end(t);
        let mut next = base;
        let log = self.topics.entry(t.to_string()).or_default();
        while records.len() >= 61 {
            let len =
                usize::try_from(i32::from_be_bytes(records[8..12].try_into().ok()?)).ok()? + 12;
            if records.len() < len || records[16] != 2 {
                return None;
            }
            let mut batch = BytesMut::from(&records[..len]);
            let delta = i64::from(i32::from_be_bytes(batch[23..27].try_into().ok()?));
            batch[0..8].copy_from_slice(&next.to_be_bytes());
            log.push((next, next + delta + 1, batch.freeze()));
            next += delta + 1;
            records.advance(len);
        }
        Some(base)
    }
}

struct Broker {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), netns::NetnsError>>>,
}

impl Broker {
    fn start(ns: &str, ip: Ipv4Addr, port: u16) -> Broker {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let thread = netns::spawn_in_netns(ns, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind((ip, port))
                    .await
                    .expect("bind");
                let _ = ready_tx.send(());
                let log = Arc::new((Mutex::new(Log::default()), Notify::new()));
                let mut stop_rx = stop_rx;
                loop {
                    let (s, _) = tokio::select! {
                        r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                        _ = &mut stop_rx => break,
                    };
                    tokio::spawn(broker_conn(s, log.clone(), ip, port));
                }
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("broker ready");
        Broker {
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn response<T: Encodable>(key: ApiKey, version: i16, corr: i32, body: &T) -> Vec<u8> {
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    let mut h = ResponseHeader::default();
    h.correlation_id = corr;
    h.encode(&mut buf, key.response_header_version(version))
        .expect("header");
    body.encode(&mut buf, version).expect("body");
    let n = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&n.to_be_bytes());
    buf.to_vec()
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

async fn broker_conn(
    mut s: tokio::net::TcpStream,
    log: Arc<(Mutex<Log>, Notify)>,
    ip: Ipv4Addr,
    port: u16,
) {
    loop {
        let mut len = [0u8; 4];
        if s.read_exact(&mut len).await.is_err() {
            return;
        }
        let mut buf = vec![0u8; i32::from_be_bytes(len).max(0) as usize];
        if s.read_exact(&mut buf).await.is_err() {
            return;
        }
        let mut b = Bytes::from(buf);
        let Ok(h) = decode_request_header_from_buffer(&mut b) else {
            return;
        };
        let Ok(key) = ApiKey::try_from(h.request_api_key) else {
            return;
        };
        let (v, corr) = (h.request_api_version, h.correlation_id);
        if key == ApiKey::ApiVersions && v > 3 {
            let mut r = ApiVersionsResponse::default();
            r.error_code = 35;
            let _ = s.write_all(&response(key, 0, corr, &r)).await;
            continue;
        }
        let out = match key {
            ApiKey::ApiVersions => {
                let mut r = ApiVersionsResponse::default();
                for (k, lo, hi) in [
                    (18i16, 0i16, 3i16),
                    (3, 1, 9),
                    (0, 3, 9),
                    (1, 4, 11),
                    (2, 1, 5),
                ] {
                    let mut a = ApiVersion::default();
                    a.api_key = k;
                    a.min_version = lo;
                    a.max_version = hi;
                    r.api_keys.push(a);
                }
                response(key, v, corr, &r)
            }
            ApiKey::Metadata => {
                let Ok(m) = MetadataRequest::decode(&mut b, v) else {
                    return;
                };
                let mut r = MetadataResponse::default();
                let mut b = MetadataResponseBroker::default();
                b.node_id = 1.into();
                b.host = StrBytes::from_string(ip.to_string());
                b.port = i32::from(port);
                r.brokers.push(b);
                r.cluster_id = Some(StrBytes::from_static_str("palisade-test"));
                r.controller_id = 1.into();
                let names: Vec<String> = match m.topics {
                    Some(ts) => ts
                        .into_iter()
                        .filter_map(|t| t.name.map(|n| n.0.to_string()))
                        .collect(),
                    None => log.0.lock().expect("log").topics.keys().cloned().collect(),
                };
                for n in names {
                    log.0
                        .lock()
                        .expect("log")
                        .topics
                        .entry(n.clone())
                        .or_default();
                    let mut t = MetadataResponseTopic::default();
                    t.name = Some(name(&n));
                    let mut p = MetadataResponsePartition::default();
                    p.partition_index = 0;
                    p.leader_id = 1.into();
                    p.replica_nodes = vec![1.into()];
                    p.isr_nodes = vec![1.into()];
                    t.partitions.push(p);
                    r.topics.push(t);
                }
                response(key, v, corr, &r)
            }
            ApiKey::Produce => {
                let Ok(p) = ProduceRequest::decode(&mut b, v) else {
                    return;
                };
                let mut r = ProduceResponse::default();
                for t in p.topic_data {
                    let mut tr = TopicProduceResponse::default();
                    tr.name = t.name.clone();
                    for pd in t.partition_data {
                        let mut pr = PartitionProduceResponse::default();
                        pr.index = pd.index;
                        pr.log_append_time_ms = -1;
                        let base = log
                            .0
                            .lock()
                            .expect("log")
                            .append(&t.name.0, pd.records.unwrap_or_default());
                        match base {
                            Some(b) if pd.index == 0 => pr.base_offset = b,
                            _ => pr.error_code = 2, // CORRUPT_MESSAGE / unknown partition
                        }
                        tr.partition_responses.push(pr);
                    }
                    r.responses.push(tr);
                }
                log.1.notify_waiters();
                if p.acks == 0 {
                    continue;
                }
                response(key, v, corr, &r)
            }
            ApiKey::Fetch => {
                let Ok(f) = FetchRequest::decode(&mut b, v) else {
                    return;
                };
                let deadline = tokio::time::Instant::now()
                    + Duration::from_millis(f.max_wait_ms.clamp(0, 1000) as u64);
                loop {
                    let notified = log.1.notified();
                    let mut r = FetchResponse::default();
                    let mut bytes_out = 0usize;
                    {
                        let l = log.0.lock().expect("log");
                        for t in &f.topics {
                            let mut tr = FetchableTopicResponse::default();
                            tr.topic = t.topic.clone();
                            for p in &t.partitions {
                                let mut pd = PartitionData::default();
                                pd.partition_index = p.partition;
                                let end = l.end(&t.topic.0);
                                pd.high_watermark = end;
                                pd.last_stable_offset = end;
                                pd.log_start_offset = 0;
                                pd.aborted_transactions = Some(vec![]);
                                let mut recs = BytesMut::new();
                                for (_, next, batch) in
                                    l.topics.get(&t.topic.0.to_string()).into_iter().flatten()
                                {
                                    if *next > p.fetch_offset {
                                        recs.extend_from_slice(batch);
                                    }
                                }
                                bytes_out += recs.len();
                                pd.records = Some(recs.freeze());
                                tr.partitions.push(pd);
                            }
                            r.responses.push(tr);
                        }
                    }
                    if bytes_out > 0 || tokio::time::Instant::now() >= deadline {
                        break response(key, v, corr, &r);
                    }
                    let _ = tokio::time::timeout_at(deadline, notified).await;
                }
            }
            ApiKey::ListOffsets => {
                let Ok(lo) = ListOffsetsRequest::decode(&mut b, v) else {
                    return;
                };
                let mut r = ListOffsetsResponse::default();
                let l = log.0.lock().expect("log");
                for t in lo.topics {
                    let mut tr = ListOffsetsTopicResponse::default();
                    tr.name = t.name.clone();
                    for p in t.partitions {
                        let mut pr = ListOffsetsPartitionResponse::default();
                        pr.partition_index = p.partition_index;
                        pr.timestamp = -1;
                        pr.offset = if p.timestamp == -2 {
                            0
                        } else {
                            l.end(&t.name.0)
                        };
                        tr.partitions.push(pr);
                    }
                    r.topics.push(tr);
                }
                response(key, v, corr, &r)
            }
            _ => return,
        };
        if s.write_all(&out).await.is_err() {
            return;
        }
    }
}

// ------------------------------------------------------------------- lab

struct Lab {
    proxy: Option<KafkaProxy>,
    broker: Option<Broker>,
    records: mpsc::Receiver<KafkaRecord>,
    kafka: Pod,
    producer: Pod,
    consumer: Pod,
    _env: TestEnv,
}

impl Lab {
    fn new() -> Lab {
        let mut env = TestEnv::new().expect("node namespace");
        let kafka = env.add_pod().expect("pod");
        let producer = env.add_pod().expect("pod");
        let consumer = env.add_pod().expect("pod");
        let m = MANIFESTS
            .replace("@KAFKA@", &kafka.ip.to_string())
            .replace("@PRODUCER@", &producer.ip.to_string())
            .replace("@CONSUMER@", &consumer.ip.to_string());
        let policy = PolicyFeed {
            manifests: vec![m],
            ..Default::default()
        }
        .build(1)
        .expect("valid manifests");
        let broker = Broker::start(&kafka.netns, kafka.ip, 9092);
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let proxy = KafkaProxy::spawn(KafkaProxyOptions {
            config: KafkaConfig {
                port: 0,
                ..Default::default()
            },
            netns: Some(env.node.clone()),
            workers: Some(1),
            policy,
            sink: Sink::callback(move |r| {
                if let Ok(tx) = tx.lock() {
                    let _ = tx.send(r);
                }
            }),
        })
        .expect("Kafka proxy starts");
        Lab {
            proxy: Some(proxy),
            broker: Some(broker),
            records: rx,
            kafka,
            producer,
            consumer,
            _env: env,
        }
    }

    fn bootstrap(&self) -> String {
        format!("{}:9092", self.kafka.ip)
    }

    fn drain(&self) -> Vec<KafkaRecord> {
        self.records.try_iter().collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.proxy.take();
        self.broker.take();
    }
}

/// kcat in a pod: (exit code, stdout, stderr).
fn kcat(ns: &str, args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "timeout", "30", "kcat"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kcat runs (Debian package kcat)");
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(stdin.as_bytes());
    }
    let out = child.wait_with_output().expect("kcat output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A raw Kafka client in a pod: one connection, requests encoded with
/// kafka-protocol.
struct Raw(TcpStream);

impl Raw {
    fn connect(ns: &str, addr: SocketAddr) -> Raw {
        let s = netns::in_netns(ns, || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        })
        .expect("netns")
        .expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Raw(s)
    }
    fn send<T: Encodable>(&mut self, key: ApiKey, v: i16, corr: i32, body: &T) {
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        let mut h = RequestHeader::default();
        h.request_api_key = key as i16;
        h.request_api_version = v;
        h.correlation_id = corr;
        h.client_id = Some(StrBytes::from_static_str("raw-test"));
        h.encode(&mut buf, key.request_header_version(v))
            .expect("header");
        body.encode(&mut buf, v).expect("body");
        let n = (buf.len() - 4) as i32;
        buf[0..4].copy_from_slice(&n.to_be_bytes());
        self.0.write_all(&buf).expect("write");
    }
    fn recv<T: Decodable>(&mut self, key: ApiKey, v: i16) -> (i32, T) {
        let mut len = [0u8; 4];
        self.0.read_exact(&mut len).expect("response size");
        let mut buf = vec![0u8; i32::from_be_bytes(len) as usize];
        self.0.read_exact(&mut buf).expect("response");
        let mut b = Bytes::from(buf);
        let h = ResponseHeader::decode(&mut b, key.response_header_version(v)).expect("header");
        (h.correlation_id, T::decode(&mut b, v).expect("body"))
    }
}

fn produce_request(topic: &str) -> ProduceRequest {
    let mut p = ProduceRequest::default();
    p.acks = 1;
    p.timeout_ms = 5000;
    let mut t = TopicProduceData::default();
    t.name = name(topic);
    let mut pd = PartitionProduceData::default();
    pd.index = 0;
    pd.records = Some(Bytes::new());
    t.partition_data.push(pd);
    p.topic_data.push(t);
    p
}

#[test]
fn kafka_rules_with_kcat_and_a_raw_client() {
    let lab = Lab::new();
    let b = lab.bootstrap();
    let pr = lab.producer.netns.clone();
    let co = lab.consumer.netns.clone();

    // the producer produces to orders (kcat waits for the delivery report)
    let (code, _, err) = kcat(
        &pr,
        &["-P", "-b", &b, "-t", "orders", "-p", "0"],
        "hello orders\nsecond\n",
    );
    assert_eq!(code, 0, "produce to orders: {err}");
    let recs = lab.drain();
    assert!(
        recs.iter().any(|r| r.api_key == "produce"
            && r.verdict == L7Verdict::Forwarded
            && r.topics == ["orders"]),
        "{recs:?}"
    );

    // the consumer reads it back
    let (code, out, err) = kcat(
        &co,
        &[
            "-C",
            "-b",
            &b,
            "-t",
            "orders",
            "-p",
            "0",
            "-o",
            "beginning",
            "-e",
            "-q",
        ],
        "",
    );
    assert_eq!(code, 0, "consume orders: {err}");
    assert_eq!(out, "hello orders\nsecond\n");

    // produce to another topic: authorization failure
    let (code, _, err) = kcat(
        &pr,
        &["-P", "-b", &b, "-t", "payments", "-p", "0"],
        "nope\n",
    );
    assert_ne!(code, 0);
    assert!(err.to_ascii_lowercase().contains("authorization"), "{err}");
    let recs = lab.drain();
    assert!(
        recs.iter().any(|r| r.verdict == L7Verdict::Dropped
            && r.error_code == Some(29)
            && r.topics == ["payments"]),
        "{recs:?}"
    );

    // the producer role does not include consuming (ListOffsets, Fetch)
    let (code, out, err) = kcat(
        &pr,
        &[
            "-C",
            "-b",
            &b,
            "-t",
            "orders",
            "-p",
            "0",
            "-o",
            "beginning",
            "-e",
            "-q",
            "-m",
            "5",
        ],
        "",
    );
    assert!(code != 0 || out.is_empty(), "{code} {out} {err}");
    let recs = lab.drain();
    assert!(
        recs.iter()
            .any(|r| matches!(r.api_key.as_str(), "fetch" | "offsets")
                && r.verdict == L7Verdict::Dropped
                && r.error_code == Some(29)),
        "consuming by the producer is denied: {recs:?}"
    );

    // a raw client: a denied Produce gets TOPIC_AUTHORIZATION_FAILED per
    // partition with its correlation id, and the connection stays usable
    let addr = SocketAddr::from((lab.kafka.ip, 9092));
    let mut raw = Raw::connect(&pr, addr);
    raw.send(ApiKey::Produce, 7, 100, &produce_request("payments"));
    raw.send(ApiKey::Produce, 7, 101, &produce_request("orders"));
    let (corr, r): (i32, ProduceResponse) = raw.recv(ApiKey::Produce, 7);
    assert_eq!(corr, 100);
    assert_eq!(r.responses[0].name.0.to_string(), "payments");
    assert_eq!(r.responses[0].partition_responses[0].error_code, 29);
    let (corr, r): (i32, ProduceResponse) = raw.recv(ApiKey::Produce, 7);
    assert_eq!(corr, 101);
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    let s = lab.proxy.as_ref().expect("proxy").stats();
    assert!(s.requests_denied >= 2 && s.requests_forwarded >= 4, "{s:?}");
}
