//! Label and field selectors, as `?labelSelector=` / `?fieldSelector=` and
//! `-l` take them (`app=web,tier!=db,env in (a,b),!canary`), and the
//! `LabelSelector` objects (matchLabels / matchExpressions) that ReplicaSets,
//! Deployments and NetworkPolicies carry.

use std::collections::BTreeMap;

use serde_json::Value;

/// A selector that did not parse; the message names the bad part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {input:?}: {reason}")]
pub struct SelectorError {
    pub input: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    fn matches(&self, get: &dyn Fn(&str) -> Option<String>) -> bool {
        match self {
            Requirement::Equals(k, v) => get(k).as_deref() == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k).as_deref() != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.contains(&x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| !vs.contains(&x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
        }
    }
}

/// A parsed selector: every requirement must hold. Empty matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

fn valid_key(k: &str) -> bool {
    !k.is_empty() && k.len() <= 317 && k.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

impl Selector {
    /// Parses the string form.
    pub fn parse(input: &str) -> Result<Selector, SelectorError> {
        let err = |reason: String| SelectorError { input: input.to_string(), reason };
        let mut requirements = Vec::new();
        // Split on commas that are not inside parentheses.
        let mut parts = Vec::new();
        let (mut depth, mut start) = (0i32, 0usize);
        for (i, c) in input.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&input[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        if depth != 0 {
            return Err(err("unbalanced parentheses".into()));
        }
        parts.push(&input[start..]);
        for part in parts.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
            let req = if let Some(key) = part.strip_prefix('!') {
                Requirement::DoesNotExist(key.trim().to_string())
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, rest)) = split_word(part, " notin ") {
                Requirement::NotIn(k, set_values(&rest).ok_or_else(|| err(format!("{part:?}: expected notin (a,b)")))?)
            } else if let Some((k, rest)) = split_word(part, " in ") {
                Requirement::In(k, set_values(&rest).ok_or_else(|| err(format!("{part:?}: expected in (a,b)")))?)
            } else {
                Requirement::Exists(part.to_string())
            };
            let key = match &req {
                Requirement::Equals(k, _)
                | Requirement::NotEquals(k, _)
                | Requirement::In(k, _)
                | Requirement::NotIn(k, _)
                | Requirement::Exists(k)
                | Requirement::DoesNotExist(k) => k,
            };
            if !valid_key(key) {
                return Err(err(format!("{key:?} is not a valid key")));
            }
            requirements.push(req);
        }
        Ok(Selector { requirements })
    }

    /// Builds a selector from a `LabelSelector` object (`matchLabels`,
    /// `matchExpressions`).
    pub fn from_label_selector(sel: &Value) -> Result<Selector, SelectorError> {
        let err = |reason: String| SelectorError { input: sel.to_string(), reason };
        let mut requirements = Vec::new();
        if let Some(labels) = sel.get("matchLabels") {
            let map = labels.as_object().ok_or_else(|| err("matchLabels must be a map of strings".into()))?;
            for (k, v) in map {
                let v = v.as_str().ok_or_else(|| err(format!("matchLabels.{k} must be a string")))?;
                requirements.push(Requirement::Equals(k.clone(), v.to_string()));
            }
        }
        if let Some(exprs) = sel.get("matchExpressions") {
            let list = exprs.as_array().ok_or_else(|| err("matchExpressions must be a list".into()))?;
            for (i, e) in list.iter().enumerate() {
                let key =
                    e.get("key").and_then(Value::as_str).ok_or_else(|| err(format!("matchExpressions[{i}].key is required")))?.to_string();
                let values: Vec<String> = e
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|vs| vs.iter().filter_map(|v| v.as_str().map(String::from)).collect())
                    .unwrap_or_default();
                let op = e.get("operator").and_then(Value::as_str).unwrap_or("");
                requirements.push(match op {
                    "In" if !values.is_empty() => Requirement::In(key, values),
                    "NotIn" if !values.is_empty() => Requirement::NotIn(key, values),
                    "Exists" if values.is_empty() => Requirement::Exists(key),
                    "DoesNotExist" if values.is_empty() => Requirement::DoesNotExist(key),
                    "In" | "NotIn" => return Err(err(format!("matchExpressions[{i}]: operator {op} needs values"))),
                    "Exists" | "DoesNotExist" => return Err(err(format!("matchExpressions[{i}]: operator {op} takes no values"))),
                    _ => return Err(err(format!("matchExpressions[{i}].operator {op:?} is not In, NotIn, Exists or DoesNotExist"))),
                });
            }
        }
        Ok(Selector { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Matches a label map.
    pub fn matches_labels(&self, labels: &BTreeMap<String, String>) -> bool {
        let get = |k: &str| labels.get(k).cloned();
        self.requirements.iter().all(|r| r.matches(&get))
    }

    /// Matches an object's `metadata.labels`.
    pub fn matches_object(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str).map(String::from);
        self.requirements.iter().all(|r| r.matches(&get))
    }

    /// Matches as a field selector: keys are dotted paths into the object
    /// (`metadata.name`, `spec.nodeName`, `status.phase`); a missing field
    /// reads as "".
    pub fn matches_fields(&self, object: &Value) -> bool {
        let get = |path: &str| {
            let pointer = format!("/{}", path.replace('.', "/"));
            Some(match object.pointer(&pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            })
        };
        self.requirements.iter().all(|r| r.matches(&get))
    }
}

fn split_word(part: &str, word: &str) -> Option<(String, String)> {
    part.find(word).map(|i| (part[..i].trim().to_string(), part[i + word.len()..].trim().to_string()))
}

fn set_values(rest: &str) -> Option<Vec<String>> {
    let inner = rest.strip_prefix('(')?.strip_suffix(')')?;
    Some(inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_and_matches_label_selectors() {
        let s = Selector::parse("app=web,tier!=db,env in (prod, staging),!canary").unwrap();
        assert_eq!(s.requirements.len(), 4);
        let pod = json!({"metadata": {"labels": {"app": "web", "env": "prod"}}});
        assert!(s.matches_object(&pod));
        let canary = json!({"metadata": {"labels": {"app": "web", "env": "prod", "canary": "1"}}});
        assert!(!s.matches_object(&canary));
        assert!(Selector::parse("").unwrap().matches_object(&json!({})));
        assert!(Selector::parse("app in (a").is_err());
        assert!(Selector::parse("bad key=1").is_err());
    }

    #[test]
    fn field_selectors_read_dotted_paths() {
        let s = Selector::parse("spec.nodeName=n1,metadata.name!=x").unwrap();
        assert!(s.matches_fields(&json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}})));
        let unbound = Selector::parse("spec.nodeName=").unwrap();
        assert!(unbound.matches_fields(&json!({"spec": {}})));
    }

    #[test]
    fn label_selector_objects() {
        let s = Selector::from_label_selector(&json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe"]}]
        }))
        .unwrap();
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string()), ("tier".to_string(), "fe".to_string())].into();
        assert!(s.matches_labels(&labels));
        let bad = Selector::from_label_selector(&json!({"matchExpressions": [{"key": "a", "operator": "Near"}]}));
        assert!(bad.unwrap_err().reason.contains("Near"));
    }
}
