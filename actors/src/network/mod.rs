//! Service networking on a node: the view of Services and their ready
//! endpoints ([`service_table`]), the address plans ([`ipam`]), cluster
//! DNS ([`dns`]), NetworkPolicy resolved to addresses ([`policy`]), the
//! kernel rules that carry virtual IPs and isolation ([`nft`]) and, without
//! root, node ports carried in userspace ([`userspace_proxy`]). Decisions
//! are plain functions; the Proxy and Dns actors around them do the I/O.

pub mod dns;
pub mod ipam;
pub mod nft;
pub mod policy;
pub mod proxy;
pub mod service_table;
pub mod userspace_proxy;
