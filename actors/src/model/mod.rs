//! The object model: Kubernetes' resources as flotilla serves them, kept as
//! JSON in Kubernetes' shapes, with admission (defaults and validation),
//! selectors and quantities as plain functions.

pub mod admission;
pub mod heartbeats;
pub mod object;
pub mod quantity;
pub mod resources;
pub mod selector;
pub mod shapes;
pub mod table;
