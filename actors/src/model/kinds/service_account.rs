//! ServiceAccounts: identities for processes in pods. Every namespace has
//! a `default` one, created in the transaction that creates the namespace.
//! Their tokens are signed JWTs issued through the `token` subresource
//! (Kubernetes' TokenRequest); nothing about a token is stored.

use std::time::SystemTime;

use k8s_openapi::api::core::v1 as core;
use serde_json::{json, Value};

use crate::model::columns::{age, col, Column};
use crate::model::resources::{core, Resource};
use crate::model::strategy::{typed, Strategy};

pub const SERVICE_ACCOUNTS: Resource =
    core("ServiceAccount", "serviceaccounts", "serviceaccount", true, &["sa"], &["token"], &ServiceAccount);

/// The account every namespace has, and pods run as when they name none.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// The `default` ServiceAccount of namespace `ns`, as a client would write it.
pub fn default_account(ns: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": DEFAULT_SERVICE_ACCOUNT, "namespace": ns}})
}

pub struct ServiceAccount;

impl Strategy for ServiceAccount {
    fn check_typed(&self, object: &Value) -> Result<(), String> {
        typed::<core::ServiceAccount>(object).map(drop)
    }

    fn columns(&self) -> Vec<Column> {
        vec![col("Name", "string", 0), col("Secrets", "integer", 0), col("Age", "string", 0)]
    }

    fn cells(&self, object: &Value, now: SystemTime) -> Vec<Value> {
        let sa: core::ServiceAccount = typed(object).unwrap_or_default();
        vec![json!(sa.metadata.name.unwrap_or_default()), json!(sa.secrets.map_or(0, |s| s.len())), json!(age(object, now))]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_default_account_is_a_valid_service_account() {
        let sa = default_account("team-a");
        assert_eq!(ServiceAccount.check_typed(&sa), Ok(()));
        assert_eq!(sa["metadata"]["namespace"], "team-a");
        let cells = ServiceAccount.cells(&sa, SystemTime::now());
        assert_eq!(cells[..2], [json!("default"), json!(0)]);
    }
}
