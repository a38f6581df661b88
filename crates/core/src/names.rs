//! Aggregation names: how the `/mcp` route gives every catalog server's tools, prompts and
//! resources one namespace.
//!
//! Tools and prompts are `{server}__{name}`. Server names match `[a-z0-9][a-z0-9-]*` (no `_`), so
//! the first `__` always splits. Resource URIs are wrapped as `portcullis://{server}/{original}`
//! … see [`wrap_uri`].

/// Is `name` a valid catalog server name?
pub fn valid_server_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'0'..=b'9'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
        && name.len() <= 63
}

/// `{server}__{name}`.
pub fn join(server: &str, name: &str) -> String {
    let mut out = String::with_capacity(server.len() + 2 + name.len());
    out.push_str(server);
    out.push_str("__");
    out.push_str(name);
    out
}

/// Splits an aggregated name at the first `__`. None when there is no `__`, or the server part is
/// not a valid server name, or the rest is empty.
pub fn split(aggregated: &str) -> Option<(&str, &str)> {
    let (server, name) = aggregated.split_once("__")?;
    (valid_server_name(server) && !name.is_empty()).then_some((server, name))
}

/// Resource URI as seen on the aggregated route: `portcullis://{server}/` followed by the
/// upstream URI, percent-free and reversible (the upstream URI is appended verbatim).
pub fn wrap_uri(server: &str, uri: &str) -> String {
    format!("{URI_SCHEME}://{server}/{uri}")
}

/// Reverses [`wrap_uri`].
pub fn unwrap_uri(uri: &str) -> Option<(&str, &str)> {
    let rest = uri.strip_prefix(URI_SCHEME)?.strip_prefix("://")?;
    let (server, original) = rest.split_once('/')?;
    (valid_server_name(server) && !original.is_empty()).then_some((server, original))
}

/// Scheme of aggregated resource URIs.
pub const URI_SCHEME: &str = "portcullis";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_double_underscore_splits() {
        assert_eq!(split("git__log__all"), Some(("git", "log__all")));
        assert_eq!(
            split("time__get_current_time"),
            Some(("time", "get_current_time"))
        );
        assert_eq!(split("Time__x"), None);
        assert_eq!(split("time__"), None);
        assert_eq!(split("notaggregated"), None);
    }

    #[test]
    fn uri_round_trip() {
        let wrapped = wrap_uri("everything", "test://static/resource/1");
        assert_eq!(wrapped, "portcullis://everything/test://static/resource/1");
        assert_eq!(
            unwrap_uri(&wrapped),
            Some(("everything", "test://static/resource/1"))
        );
        assert_eq!(unwrap_uri("file:///etc/passwd"), None);
    }
}
