//! A workload the simulated clients keep: one Deployment and its Service,
//! with what the checks expect of it.

use crate::clock::Mono;

/// A Deployment the workload made, and what the checks need to know.
#[derive(Debug, Clone)]
pub struct Workload {
    pub namespace: String,
    pub name: String,
    pub replicas: i64,
    pub surge: i64,
    pub unavailable: i64,
    pub image: u32,
    /// When its replica count last changed (or it was made).
    pub resized_at: Mono,
}
