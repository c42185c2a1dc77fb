//! A tiny gRPC service (`demo.Greeter` with `SayHello` and `SayGoodbye`)
//! without protoc: hand-written prost messages, tonic's codec and
//! client/server machinery, served by hyper (h2c) in a pod.

use palisade_datapath::netns;
use std::net::Ipv4Addr;
use std::sync::mpsc;
use std::task::{Context, Poll};
use std::time::Duration;

#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloRequest {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloReply {
    #[prost(string, tag = "1")]
    pub message: String,
}

#[derive(Clone)]
struct Greeter(&'static str);

impl tonic::codegen::Service<tonic::Request<HelloRequest>> for Greeter {
    type Response = tonic::Response<HelloReply>;
    type Error = tonic::Status;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: tonic::Request<HelloRequest>) -> Self::Future {
        std::future::ready(Ok(tonic::Response::new(HelloReply {
            message: format!("{} {}", self.0, req.get_ref().name),
        })))
    }
}

/// The gRPC server in a pod; stops on drop.
pub struct GrpcServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), netns::NetnsError>>>,
}

impl GrpcServer {
    pub fn start(ns: &str, port: u16) -> GrpcServer {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let thread = netns::spawn_in_netns(ns, move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
                    .await
                    .expect("bind");
                let _ = ready_tx.send(());
                loop {
                    let (stream, _) = tokio::select! {
                        r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                        _ = &mut stop_rx => break,
                    };
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(
                            |req: hyper::Request<hyper::body::Incoming>| async move {
                                let codec =
                                    tonic_prost::ProstCodec::<HelloReply, HelloRequest>::default();
                                let mut grpc = tonic::server::Grpc::new(codec);
                                let resp = match req.uri().path() {
                                    "/demo.Greeter/SayHello" => {
                                        grpc.unary(Greeter("hello"), req).await
                                    }
                                    "/demo.Greeter/SayGoodbye" => {
                                        grpc.unary(Greeter("goodbye"), req).await
                                    }
                                    _ => tonic::Status::unimplemented("no such method").into_http(),
                                };
                                Ok::<_, std::convert::Infallible>(resp)
                            },
                        );
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("grpc server ready");
        GrpcServer {
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Calls `method` (`SayHello` or `SayGoodbye`) from pod namespace `ns`
/// with a real tonic client; returns the reply or the gRPC status.
pub fn call(ns: &str, ip: Ipv4Addr, port: u16, method: &str) -> Result<String, tonic::Status> {
    let path = format!("/demo.Greeter/{method}");
    netns::in_netns(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{ip}:{port}"))
                .map_err(|e| tonic::Status::internal(e.to_string()))?
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(10));
            let channel = endpoint
                .connect()
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let mut client = tonic::client::Grpc::new(channel);
            client
                .ready()
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let codec = tonic_prost::ProstCodec::<HelloRequest, HelloReply>::default();
            let path = http::uri::PathAndQuery::try_from(path)
                .map_err(|e| tonic::Status::internal(e.to_string()))?;
            let reply = client
                .unary(
                    tonic::Request::new(HelloRequest {
                        name: "palisade".into(),
                    }),
                    path,
                    codec,
                )
                .await?;
            Ok(reply.into_inner().message)
        })
    })
    .map_err(|e| tonic::Status::internal(e.to_string()))?
}
