//! The query parameters of object requests (list, watch, delete), parsed
//! once, with an error that names the parameter when one is malformed.

use std::collections::HashMap;

use flotilla_actors::limits::GRACE_PERIOD_SECONDS_MAX;
use flotilla_actors::model::selector::Selector;

use super::status::ApiError;

/// The query parameters flotilla understands.
#[derive(Default, Debug)]
pub struct Params {
    pub watch: bool,
    pub resource_version: Option<String>,
    pub labels: Selector,
    pub fields: Selector,
    pub limit: usize,
    pub continue_token: Option<String>,
    pub bookmarks: bool,
    pub timeout_seconds: Option<u64>,
    pub propagation: Option<String>,
    pub full_objects: bool,
    pub grace_period_seconds: Option<i64>,
}

/// A grace period from a query or DeleteOptions, within what a deadline
/// can be computed from.
pub fn grace_period(seconds: u64) -> Result<i64, ApiError> {
    i64::try_from(seconds)
        .ok()
        .filter(|s| *s <= GRACE_PERIOD_SECONDS_MAX)
        .ok_or_else(|| ApiError::bad_request(format!("gracePeriodSeconds {seconds} must be from 0 to {GRACE_PERIOD_SECONDS_MAX}")))
}

impl Params {
    pub fn parse(query: &str) -> Result<Params, ApiError> {
        let map: HashMap<String, String> =
            serde_urlencoded::from_str(query).map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))?;
        let flag = |k: &str| map.get(k).is_some_and(|v| v == "true" || v == "1");
        let number = |k: &str| -> Result<Option<u64>, ApiError> {
            map.get(k)
                .filter(|v| !v.is_empty())
                .map(|v| v.parse::<u64>().map_err(|_| ApiError::bad_request(format!("{k}={v:?} must be a whole number"))))
                .transpose()
        };
        Ok(Params {
            watch: flag("watch"),
            resource_version: map.get("resourceVersion").filter(|v| !v.is_empty()).cloned(),
            labels: Selector::parse(map.get("labelSelector").map_or("", String::as_str))
                .map_err(|e| ApiError::bad_request(e.to_string()))?,
            fields: Selector::parse(map.get("fieldSelector").map_or("", String::as_str))
                .map_err(|e| ApiError::bad_request(e.to_string()))?,
            limit: number("limit")?.unwrap_or(0) as usize,
            continue_token: map.get("continue").filter(|v| !v.is_empty()).cloned(),
            bookmarks: flag("allowWatchBookmarks"),
            timeout_seconds: number("timeoutSeconds")?,
            propagation: map.get("propagationPolicy").cloned(),
            full_objects: map.get("includeObject").is_some_and(|v| v == "Object"),
            grace_period_seconds: number("gracePeriodSeconds")?.map(grace_period).transpose()?,
        })
    }

    /// resourceVersion as a revision; "" and "0" mean "any / from now".
    pub fn revision(&self) -> Result<u64, ApiError> {
        match self.resource_version.as_deref() {
            None | Some("0") => Ok(0),
            Some(v) => {
                v.parse().map_err(|_| ApiError::bad_request(format!("resourceVersion {v:?} must be a number as returned by the server")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_parse_selectors_and_numbers() {
        let p = Params::parse("watch=true&resourceVersion=12&labelSelector=app%3Dweb&limit=5").unwrap();
        assert!(p.watch);
        assert_eq!(p.revision().unwrap(), 12);
        assert_eq!(p.limit, 5);
        assert!(!p.labels.is_empty());
        assert!(Params::parse("limit=x").is_err());
        assert_eq!(Params::parse("gracePeriodSeconds=5").unwrap().grace_period_seconds, Some(5));
        assert!(Params::parse("gracePeriodSeconds=9223372036854775807").is_err());
        assert!(Params::parse("gracePeriodSeconds=18446744073709551615").is_err());
    }
}
