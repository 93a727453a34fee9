//! Service networking on a node: the view of Services and their ready
//! endpoints ([`service_table`]), cluster DNS ([`dns`]), NetworkPolicy resolved to addresses ([`policy`]), the
//! kernel rules that carry virtual IPs and isolation ([`nft`]) and, without
//! root, node ports carried in userspace ([`userspace_proxy`]). Decisions
//! are plain functions; the Proxy and Dns actors around them do the I/O.
//! The cluster's address plan (service IPs, node ports, pod subnets) is
//! part of the object model (`model::addresses`): the registry allocates
//! from it without importing anything here.

pub mod api_relay;
pub mod dns;
pub mod nft;
pub mod policy;
pub mod proxy;
pub mod service_table;
pub mod userspace_proxy;
