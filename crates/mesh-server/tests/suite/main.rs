//! The server's behaviour over real sockets on 127.0.0.1, run once per
//! backend, one file per topic. Each test is an `async fn(BackendKind)`;
//! the `suite!` macro at the bottom of each file turns every one into a
//! `#[tokio::test]` per backend (`TOPIC::memory::TEST`, `TOPIC::redis::TEST`,
//! `TOPIC::redis_cluster::TEST`).

#[macro_use]
#[path = "../common/mod.rs"]
mod common;

mod hooks;
mod http;
mod instances;
mod limits;
mod liveness;
mod malformed;
mod metadata;
mod presence;
