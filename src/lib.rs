//! The `flotilla` binary's library: the HTTP API, the client commands and
//! the wiring of server processes. The store lives in `flotilla-raft`, the
//! object model and actors in `flotilla-actors`; this crate puts them
//! together.

pub mod api;
pub mod bench_api;
pub mod bench_failover;
pub mod bench_schedule;
pub mod bench_service;
pub mod bench_startup;
pub mod bench_store_cluster;
pub mod bench_store_degraded;
pub mod bench_store_failover;
pub mod client;
pub mod cmd_agent;
pub mod cmd_apply;
pub mod cmd_certificate;
pub mod cmd_change;
pub mod cmd_chaos;
pub mod cmd_get;
pub mod cmd_kubeconfig;
pub mod cmd_logs;
pub mod cmd_rollout;
pub mod cmd_secrets_encrypt;
pub mod cmd_server;
pub mod cmd_sim;
pub mod cmd_store;
pub mod cmd_token;
pub mod cmd_up;
pub mod kubeconfig;
pub mod kubelet_api;
pub mod kubelet_client;
pub mod manifest;
pub mod node_network;
pub mod sim_cluster;
pub mod stats;
pub mod store_bench;
pub mod wiring;

/// Makes ring the process's TLS provider, as quinn's is. reqwest builds
/// every client against the process default and panics without one, so
/// this runs before the first client is built; calling it again is free.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
