//! Who a request comes from, once authenticated: a name and groups, read
//! the way Kubernetes reads them from a certificate, a static token or a
//! ServiceAccount token.

/// The group whose members may do anything (Kubernetes' name).
pub const MASTERS_GROUP: &str = "system:masters";
/// Every authenticated request carries this group too.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}
