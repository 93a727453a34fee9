//! A bearer token as any HTTP client sends it: verified against a CA.
//! Garbage answers an error, never a panic, and nothing that was not
//! signed by the CA is ever accepted.
#![no_main]

use std::sync::OnceLock;

use flotilla_raft::tls::ClusterCa;
use libfuzzer_sys::fuzz_target;

fn ca() -> &'static ClusterCa {
    static CA: OnceLock<ClusterCa> = OnceLock::new();
    CA.get_or_init(|| ClusterCa::generate("fuzz").expect("a CA"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    assert!(ca().verify_jwt(token, "https://kubernetes.default.svc.cluster.local", 1_800_000_000).is_err(), "an unsigned token was accepted");
});
