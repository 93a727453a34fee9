//! The object model: Kubernetes' resources as flotilla serves them, kept as
//! JSON in Kubernetes' shapes, each kind's behaviour in its file under
//! `kinds`, with admission, selectors and quantities as plain functions.

pub mod addresses;
pub mod admission;
pub mod columns;
pub mod field_errors;
pub mod heartbeats;
pub mod kinds;
pub mod object;
pub mod quantity;
pub mod rbac;
pub mod resources;
pub mod selector;
pub mod service_account_token;
pub mod strategy;
pub mod table;
