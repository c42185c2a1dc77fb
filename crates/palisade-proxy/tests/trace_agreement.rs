//! (d) The proxy and `palisade policy trace` agree: a corpus of requests
//! (clients × destinations × methods × paths × headers) against the l7-http
//! acceptance manifests, comparing the proxy's actual answer (200, 403 or
//! a reset connection) with trace's verdict.

mod common;

use common::*;
use palisade_policy::api::Protocol;
use palisade_policy::l7::{HttpRequest, L7Request};
use palisade_policy::trace::{PeerSpec, Query, trace};
use palisade_proxy::ProxyConfig;

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Outcome {
    Allowed,
    L7Denied,
    L4Denied,
}

#[test]
fn proxy_and_trace_agree() {
    let mut lab = Lab::new(
        &["frontend", "other", "myapp", "myservice", "catalog"],
        &manifests(),
        ProxyConfig::default(),
    );
    lab.serve("myapp", 80);
    lab.serve("myservice", 80);
    lab.serve("catalog", 8080);
    let engine_snapshot = Lab::snapshot(&lab.manifests);
    let engine = engine_snapshot.engine();

    let clients = ["frontend", "other"];
    let dests = [("myapp", 80u16), ("myservice", 80), ("catalog", 8080)];
    let methods = ["GET", "POST", "PUT", "DELETE", "PATCH"];
    let paths = [
        "/",
        "/public",
        "/public/index.html",
        "/private",
        "/path1",
        "/path1/extra",
        "/path2",
        "/items/42",
        "/items/abc",
        "/items/",
        "/public?x=1",
    ];
    let headers: [&[(&str, &str)]; 4] = [
        &[],
        &[("X-My-Header", "true")],
        &[("X-My-Header", "false")],
        &[("x-my-header", "true"), ("X-Other", "1")],
    ];
    let mut checked = 0;
    let mut outcomes = std::collections::BTreeMap::new();
    for client in clients {
        let ns = lab.pod(client).netns.clone();
        for (dest, port) in dests {
            let mut conn: Option<RawClient> = None;
            for method in methods {
                for path in paths {
                    for hs in headers {
                        let q = Query {
                            from: PeerSpec::Pod(format!("default/{client}")),
                            to: PeerSpec::Pod(format!("default/{dest}")),
                            protocol: Protocol::TCP,
                            port,
                            l7: Some(L7Request::Http(HttpRequest {
                                method: method.into(),
                                path: path.into(),
                                host: Some("test".into()),
                                headers: hs
                                    .iter()
                                    .map(|(a, b)| (a.to_string(), b.to_string()))
                                    .collect(),
                            })),
                        };
                        let t = trace(engine, &q).expect("trace");
                        let expected = if t.allowed {
                            Outcome::Allowed
                        } else if t
                            .directions
                            .iter()
                            .any(|d| d.l7.as_ref().is_some_and(|l| !l.allowed))
                        {
                            Outcome::L7Denied
                        } else {
                            Outcome::L4Denied
                        };
                        if conn.is_none() {
                            conn = RawClient::connect(&ns, lab.ip(dest), port).ok();
                        }
                        let got = match conn.as_mut().map(|c| c.request(method, path, hs)) {
                            Some(Ok(r)) if r.status == 200 => Outcome::Allowed,
                            Some(Ok(r)) if r.status == 403 && r.body == "Access denied" => {
                                Outcome::L7Denied
                            }
                            Some(Ok(r)) => panic!(
                                "{client} -> {dest}: {method} {path} {hs:?}: unexpected {r:?}"
                            ),
                            Some(Err(_)) | None => {
                                conn = None;
                                Outcome::L4Denied
                            }
                        };
                        assert_eq!(
                            got, expected,
                            "{client} -> {dest}:{port} {method} {path} {hs:?}\ntrace:\n{t}"
                        );
                        *outcomes.entry(format!("{expected:?}")).or_insert(0) += 1;
                        checked += 1;
                    }
                }
            }
        }
    }
    assert_eq!(checked, 2 * 3 * 5 * 11 * 4);
    // the corpus exercises every outcome
    assert_eq!(outcomes.len(), 3, "{outcomes:?}");
    eprintln!("{checked} requests agree: {outcomes:?}");
}
