//! The seed's L7 HTTP examples through the transparent proxy, with real
//! curl clients and HTTP servers in pods (root; unique namespaces removed
//! on drop).

mod common;

use common::*;
use palisade_proxy::{L7Verdict, ProxyConfig};
use std::time::Duration;

/// (a) `example-policy`: only GET /public, only from frontend.
#[test]
fn only_get_public_from_frontend() {
    let mut lab = Lab::new(
        &["frontend", "other", "myapp"],
        &manifests(),
        ProxyConfig::default(),
    );
    lab.serve("myapp", 80);
    let url = |p: &str| format!("http://{}:80{p}", lab.ip("myapp"));
    let fe = lab.pod("frontend").netns.clone();

    let r = curl(&fe, &[&url("/public")]);
    assert_eq!(r.status, 200, "{r:?}");
    // the destination saw the client's own address (transparent upstream)
    assert!(
        r.body.contains(&format!("peer: {}:", lab.ip("frontend"))),
        "{}",
        r.body
    );
    let rec = lab.next_record();
    assert_eq!(rec.verdict, L7Verdict::Forwarded);
    assert_eq!(rec.status, Some(200));
    assert_eq!(rec.method, "GET");
    assert!(rec.url.ends_with("/public"), "{}", rec.url);
    assert_eq!(rec.protocol, "HTTP/1.1");
    assert_eq!(rec.endpoint.as_deref(), Some("default/myapp"));
    assert!(
        rec.source.labels.iter().any(|l| l == "k8s:app=frontend"),
        "{:?}",
        rec.source.labels
    );
    assert!(
        rec.rules.iter().any(|r| r.policy.name == "example-policy"),
        "{:?}",
        rec.rules
    );

    let r = curl(&fe, &["-X", "POST", "-d", "x=1", &url("/public")]);
    assert_eq!((r.status, r.body.as_str()), (403, "Access denied"), "{r:?}");
    let rec = lab.next_record();
    assert_eq!((rec.verdict, rec.status), (L7Verdict::Dropped, Some(403)));
    assert!(rec.rules.iter().any(|r| r.policy.name == "example-policy"));

    let r = curl(&fe, &[&url("/other")]);
    assert_eq!((r.status, r.body.as_str()), (403, "Access denied"), "{r:?}");

    // HTTP/2 prior knowledge (h2c) gets the same decisions
    let r = curl(&fe, &["--http2-prior-knowledge", &url("/public")]);
    assert_eq!(r.status, 200, "{r:?}");
    let r = curl(&fe, &["--http2-prior-knowledge", &url("/other")]);
    assert_eq!((r.status, r.body.as_str()), (403, "Access denied"), "{r:?}");
    let recs: Vec<_> = std::iter::from_fn(|| lab.records.recv_timeout(Duration::from_secs(5)).ok())
        .take(3)
        .collect();
    assert!(
        recs.iter()
            .any(|r| r.protocol == "HTTP/2" && r.status == Some(403)),
        "{recs:?}"
    );

    // an HTTP/1.1 `Upgrade: h2c` is simply not taken up
    let r = curl(&fe, &["--http2", &url("/public")]);
    assert_eq!(r.status, 200, "{r:?}");

    // another pod is denied at L3/L4: the connection is reset, no HTTP answer
    let other = lab.pod("other").netns.clone();
    let r = curl(&other, &[&url("/public")]);
    assert_ne!(r.exit, 0, "{r:?}");
    assert_eq!(r.status, 0, "{r:?}");
    assert!(lab.proxy().stats().denied_connections >= 1);
}

fn myservice_lab() -> Lab {
    let mut lab = Lab::new(
        &["other", "myservice"],
        &manifests(),
        ProxyConfig::default(),
    );
    lab.serve("myservice", 80);
    lab
}

/// (b) `layer7-example`: GET /path1 and PUT /path2 with `X-My-Header: true`.
#[test]
fn path1_and_put_path2_with_header() {
    let lab = myservice_lab();
    let ns = lab.pod("other").netns.clone();
    let url = |p: &str| format!("http://{}:80{p}", lab.ip("myservice"));
    assert_eq!(curl(&ns, &[&url("/path1")]).status, 200);
    assert_eq!(
        curl(
            &ns,
            &["-X", "PUT", "-H", "X-My-Header: true", &url("/path2")]
        )
        .status,
        200
    );
    assert_eq!(curl(&ns, &["-X", "PUT", &url("/path2")]).status, 403);
    assert_eq!(
        curl(
            &ns,
            &["-X", "PUT", "-H", "X-My-Header: false", &url("/path2")]
        )
        .status,
        403
    );
    assert_eq!(
        curl(&ns, &["-H", "X-My-Header: true", &url("/path2")]).status,
        403
    );
    assert_eq!(curl(&ns, &[&url("/path1/extra")]).status, 403);
    // a chunked request body is streamed through
    let r = curl(
        &ns,
        &[
            "-X",
            "PUT",
            "-H",
            "X-My-Header: true",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            "hello world",
            &url("/path2"),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("body-length: 11"), "{}", r.body);
    // several URLs on one curl invocation share one keep-alive connection
    let r = curl(
        &ns,
        &[
            &url("/path1"),
            &url("/nope"),
            &url("/path1"),
            "-w",
            "%{num_connects}\n",
        ],
    );
    assert!(r.body.contains("Access denied"), "{r:?}");
}

/// Allowed, denied, allowed on one keep-alive connection; then pipelined.
#[test]
fn keep_alive_and_pipelining() {
    let lab = myservice_lab();
    let ns = lab.pod("other").netns.clone();
    let mut c = RawClient::connect(&ns, lab.ip("myservice"), 80).expect("connect");
    let a = c.request("GET", "/path1", &[]).expect("1st");
    assert_eq!(a.status, 200, "{a:?}");
    let peer1 = a.header("x-peer").map(str::to_string);
    let d = c.request("DELETE", "/path1", &[]).expect("2nd");
    assert_eq!((d.status, d.body.as_str()), (403, "Access denied"));
    let b = c
        .request("PUT", "/path2", &[("X-My-Header", "true")])
        .expect("3rd");
    assert_eq!(b.status, 200, "{b:?}");
    // same upstream connection: the same source port reached the server
    assert_eq!(b.header("x-peer").map(str::to_string), peer1);

    // a denied request with a body keeps the connection usable
    let mut raw = b"POST /path1 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello".to_vec();
    raw.extend(request_bytes("GET", "/path1", &[]));
    raw.extend(request_bytes("GET", "/secret", &[]));
    raw.extend(request_bytes("GET", "/path1", &[]));
    c.send(&raw).expect("pipelined");
    let statuses: Vec<u16> = (0..4)
        .map(|_| c.read_response().expect("pipelined response").status)
        .collect();
    assert_eq!(statuses, vec![403, 200, 403, 200]);
}

/// A policy update applies to an existing connection from its next request.
#[test]
fn policy_update_applies_to_the_next_request() {
    let lab = myservice_lab();
    let ns = lab.pod("other").netns.clone();
    let mut c = RawClient::connect(&ns, lab.ip("myservice"), 80).expect("connect");
    assert_eq!(c.request("GET", "/path1", &[]).expect("r").status, 200);
    assert_eq!(c.request("GET", "/path3", &[]).expect("r").status, 403);
    let before = lab.proxy().revision();
    let rev = lab.update_policy(
        &lab.manifests
            .replace("path: \"/path1$\"", "path: \"/path3$\""),
    );
    assert!(rev > before);
    assert_eq!(c.request("GET", "/path1", &[]).expect("r").status, 403);
    assert_eq!(c.request("GET", "/path3", &[]).expect("r").status, 200);
    let recs = lab.drain_records();
    let last = recs.last().expect("records");
    assert_eq!(last.policy_revision, rev);
}

/// Malformed requests get 400 and the proxy keeps serving.
#[test]
fn malformed_requests_get_400() {
    let lab = myservice_lab();
    let ns = lab.pod("other").netns.clone();
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /path1 HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"GET /path1 HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"\x00\x01\x02\x03\r\n\r\n",
    ] {
        let mut c = RawClient::connect(&ns, lab.ip("myservice"), 80).expect("connect");
        c.send(garbage).expect("send");
        let r = c.read_response().expect("a response");
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(garbage));
    }
    // oversized head: 431
    let mut c = RawClient::connect(&ns, lab.ip("myservice"), 80).expect("connect");
    let big = "a".repeat(200 * 1024);
    let r = c.send(format!("GET /path1 HTTP/1.1\r\nX-Big: {big}\r\n\r\n").as_bytes());
    if r.is_ok()
        && let Ok(resp) = c.read_response()
    {
        assert!(resp.status == 431 || resp.status == 400, "{resp:?}");
    }
    let mut c = RawClient::connect(&ns, lab.ip("myservice"), 80).expect("connect");
    assert_eq!(c.request("GET", "/path1", &[]).expect("ok").status, 200);
}

/// Upgrades are refused unless a rule allows them.
#[test]
fn upgrades_are_refused_without_a_rule() {
    let lab = myservice_lab();
    let ns = lab.pod("other").netns.clone();
    let mut c = RawClient::connect(&ns, lab.ip("myservice"), 80).expect("connect");
    let r = c
        .request(
            "GET",
            "/path1",
            &[("Connection", "Upgrade"), ("Upgrade", "websocket")],
        )
        .expect("response");
    assert_eq!((r.status, r.body.as_str()), (403, "Access denied"));
    assert_eq!(c.request("GET", "/path1", &[]).expect("ok").status, 200);
}

/// headerMatches mismatch actions rewrite the forwarded request.
#[test]
fn header_match_mismatch_actions_rewrite() {
    let policy = r#"
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: rewrite
  namespace: default
spec:
  endpointSelector:
    matchLabels:
      app: myService
  ingress:
    - toPorts:
        - ports:
            - port: "80"
              protocol: TCP
          rules:
            http:
              - method: GET
                path: "/rw"
                headerMatches:
                  - name: X-Replace
                    value: good
                    mismatch: REPLACE
                  - name: X-Add
                    value: added
                    mismatch: ADD
                  - name: X-Delete
                    value: keep-only-this
                    mismatch: DELETE
                  - name: X-Log
                    value: v
                    mismatch: LOG
"#;
    let text = manifests().replace("name: layer7-example", "name: layer7-example-off") + policy;
    let mut lab = Lab::new(&["other", "myservice"], &text, ProxyConfig::default());
    lab.serve("myservice", 80);
    let ns = lab.pod("other").netns.clone();
    let mut c = RawClient::connect(&ns, lab.ip("myservice"), 80).expect("connect");
    let r = c
        .request(
            "GET",
            "/rw",
            &[("X-Replace", "bad"), ("X-Delete", "secret"), ("X-Log", "w")],
        )
        .expect("response");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("x-replace: good\n"), "{}", r.body);
    assert!(!r.body.contains("x-replace: bad"), "{}", r.body);
    assert!(r.body.contains("x-add: added\n"), "{}", r.body);
    assert!(!r.body.contains("x-delete"), "{}", r.body);
    assert!(r.body.contains("x-log: w\n"), "{}", r.body);
    // matching values are left alone
    let r = c
        .request(
            "GET",
            "/rw",
            &[
                ("X-Replace", "good"),
                ("X-Add", "added"),
                ("X-Delete", "keep-only-this"),
            ],
        )
        .expect("response");
    assert_eq!(r.body.matches("x-add: added\n").count(), 1, "{}", r.body);
    assert!(r.body.contains("x-delete: keep-only-this\n"), "{}", r.body);
    assert_eq!(c.request("GET", "/other", &[]).expect("r").status, 403);
}

/// Slow clients are cut at the header timeout and cannot starve others;
/// per-source connection limits hold.
#[test]
fn slow_clients_do_not_starve_others() {
    let config = ProxyConfig {
        header_read_timeout: Duration::from_millis(500),
        max_connections_per_source: 8,
        ..ProxyConfig::default()
    };
    let mut lab = Lab::new(&["frontend", "other", "myservice"], &manifests(), config);
    lab.serve("myservice", 80);
    let slow_ns = lab.pod("frontend").netns.clone();
    let ip = lab.ip("myservice");
    // six slowloris connections, each with half a request head
    let mut slow: Vec<RawClient> = (0..6)
        .map(|_| {
            let mut c = RawClient::connect(&slow_ns, ip, 80).expect("connect");
            c.send(b"GET /path1 HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .expect("send");
            c
        })
        .collect();
    // others are served meanwhile
    let ns = lab.pod("other").netns.clone();
    let mut c = RawClient::connect(&ns, ip, 80).expect("connect");
    assert_eq!(c.request("GET", "/path1", &[]).expect("served").status, 200);
    // the slow ones are closed by the header timeout (408 or a close)
    for s in &mut slow {
        match s.read_response() {
            Ok(r) => assert_eq!(r.status, 408, "{r:?}"),
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ),
                "{e}"
            ),
        }
    }
    // a connection that never sends anything is closed too
    let mut silent = RawClient::connect(&slow_ns, ip, 80).expect("connect");
    assert!(silent.read_response().is_err());
    // per-source limit: 8 open connections from frontend, the 9th is reset
    let held: Vec<RawClient> = (0..8)
        .map(|_| {
            let mut c = RawClient::connect(&slow_ns, ip, 80).expect("connect");
            assert_eq!(c.request("GET", "/path1", &[]).expect("ok").status, 200);
            c
        })
        .collect();
    let refused =
        RawClient::connect(&slow_ns, ip, 80).and_then(|mut c| c.request("GET", "/path1", &[]));
    assert!(refused.is_err(), "{refused:?}");
    drop(held);
    assert!(wait_until(Duration::from_secs(5), || lab
        .proxy()
        .stats()
        .open_connections
        <= 1));
    let mut again = RawClient::connect(&slow_ns, ip, 80).expect("connect");
    assert_eq!(again.request("GET", "/path1", &[]).expect("ok").status, 200);
}

/// The agent's feed file: endpoint addresses override the manifests',
/// updates apply to open connections, invalid updates are rejected whole.
#[test]
fn feed_file_updates_and_rejections() {
    use palisade_proxy::{FeedEndpoint, PolicyFeed};
    let dir = std::env::temp_dir().join(format!("palisade-proxy-feed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join("feed.json");
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    // the manifests keep their 10.0.x addresses; the feed's endpoints say
    // where the pods really are (as the agent's IPAM would)
    let original = manifests();
    let pod_ip = |i: usize| std::net::IpAddr::V4(std::net::Ipv4Addr::new(100, 64, 0, 2 + i as u8));
    let feed = |text: &str| PolicyFeed {
        revision: Some(1),
        local_node: None,
        endpoints: vec![
            FeedEndpoint {
                pod: "default/other".into(),
                ips: vec![pod_ip(1)],
                netns: None,
            },
            FeedEndpoint {
                pod: "default/myservice".into(),
                ips: vec![pod_ip(4)],
                netns: None,
            },
        ],
        manifests: vec![text.to_string()],
        ..Default::default()
    };
    feed(&original).write_atomically(&path).expect("write feed");
    let mut lab = Lab::with_feed(
        &["other", "myservice"],
        ProxyConfig::default(),
        path.clone(),
    );
    assert_eq!(lab.ip("myservice").octets()[3], 6, "pod slots changed");
    lab.serve("myservice", 80);
    let ns = lab.pod("other").netns.clone();
    let mut c = RawClient::connect(&ns, lab.ip("myservice"), 80).expect("connect");
    assert_eq!(c.request("GET", "/path1", &[]).expect("r").status, 200);
    assert_eq!(c.request("GET", "/path3", &[]).expect("r").status, 403);

    let r0 = lab.proxy().revision();
    feed(&original.replace("path: \"/path1$\"", "path: \"/path3$\""))
        .write_atomically(&path)
        .expect("write feed");
    assert!(wait_until(Duration::from_secs(10), || lab
        .proxy()
        .revision()
        > r0));
    assert_eq!(c.request("GET", "/path1", &[]).expect("r").status, 403);
    assert_eq!(c.request("GET", "/path3", &[]).expect("r").status, 200);

    let r1 = lab.proxy().revision();
    feed(&(original.clone() + "\n---\nkind: CiliumNetworkPolicy\nspec: [unbalanced\n"))
        .write_atomically(&path)
        .expect("write feed");
    assert!(wait_until(Duration::from_secs(10), || lab
        .proxy()
        .stats()
        .feed_rejected
        == 1));
    assert_eq!(lab.proxy().revision(), r1);
    assert_eq!(c.request("GET", "/path3", &[]).expect("r").status, 200);
}
