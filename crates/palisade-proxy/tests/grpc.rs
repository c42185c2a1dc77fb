//! (c) gRPC through the proxy with a real tonic client and server pair:
//! the allowed method succeeds, another gets PERMISSION_DENIED.

mod common;

use common::grpc::{GrpcServer, call};
use common::*;
use palisade_proxy::{L7Verdict, ProxyConfig};

const GRPC_POLICY: &str = r#"
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: grpc-greeter
  namespace: default
spec:
  endpointSelector:
    matchLabels:
      app: myService
  ingress:
    - fromEndpoints:
        - matchLabels:
            app: frontend
      toPorts:
        - ports:
            - port: "50051"
              protocol: TCP
          rules:
            http:
              - method: POST
                path: "/demo.Greeter/SayHello"
"#;

#[test]
fn grpc_method_rules() {
    let text = manifests() + GRPC_POLICY;
    let lab = Lab::new(
        &["frontend", "other", "myservice"],
        &text,
        ProxyConfig::default(),
    );
    let _server = GrpcServer::start(&lab.pod("myservice").netns, 50051);
    let ns = lab.pod("frontend").netns.clone();
    let ip = lab.ip("myservice");

    let ok = call(&ns, ip, 50051, "SayHello");
    assert_eq!(
        ok.as_deref().map_err(|s| s.to_string()),
        Ok("hello palisade")
    );
    let rec = lab.next_record();
    assert_eq!(rec.protocol, "HTTP/2");
    assert_eq!(rec.verdict, L7Verdict::Forwarded);
    assert!(rec.url.ends_with("/demo.Greeter/SayHello"), "{}", rec.url);

    let denied = call(&ns, ip, 50051, "SayGoodbye").expect_err("denied");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    let rec = lab.next_record();
    assert_eq!(
        (rec.verdict, rec.status, rec.grpc_status),
        (L7Verdict::Dropped, Some(200), Some(7))
    );
    assert!(
        rec.rules.iter().any(|r| r.policy.name == "grpc-greeter"),
        "{:?}",
        rec.rules
    );

    // the allowed method still works afterwards
    assert!(call(&ns, ip, 50051, "SayHello").is_ok());

    // another pod is denied at L3/L4: its connection is reset (a
    // transport error, not a gRPC status from the proxy)
    let other = lab.pod("other").netns.clone();
    let err = call(&other, ip, 50051, "SayHello").expect_err("denied");
    // (tonic reports the reset as Unavailable, Unknown or, when it lands
    // while the request is in flight, Cancelled with a transport source)
    assert!(
        matches!(
            err.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
        ),
        "{err:?}"
    );
    if err.code() == tonic::Code::Cancelled {
        assert!(
            std::error::Error::source(&err).is_some(),
            "a transport error, not a status: {err:?}"
        );
    }
    assert!(lab.proxy().stats().denied_connections >= 1);
}
