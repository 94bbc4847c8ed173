//! Per-key response headers with template values (`${key.id}`, `${key.name}`,
//! `${key.owner}`, `${key.expires_at}`), as the Data Hub attaches to its keys.

use serde::{Deserialize, Serialize};

/// The variables a template may use.
pub const VARIABLES: &[&str] = &["key.id", "key.name", "key.owner", "key.expires_at"];
/// The whole values a key's owner may give a header without an admin: each one
/// variable that apikeyd fills in and the owner cannot choose, so the upstream is
/// told nothing the owner made up. `${key.name}` is not among them: the owner picks
/// the name, so `X-Tenant=${key.name}` on a key named "admin" would forge a claim as
/// well as literal text would.
pub const OWNER_VALUES: &[&str] = &["${key.id}", "${key.owner}", "${key.expires_at}"];
const MAX_VALUE: usize = 1024;

/// One configured header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderTemplate {
    /// Header name, e.g. `X-Tenant`.
    pub name: String,
    /// Value with `${...}` variables.
    pub template: String,
}

/// Why a header was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Not `NAME=TEMPLATE`.
    #[error("header {0:?} must be written NAME=TEMPLATE")]
    Form(String),
    /// Bad header name.
    #[error(
        "{0:?} is not a valid HTTP header name (letters, digits and !#$%&'*+-.^`|~, at most 64)"
    )]
    Name(String),
    /// A name with `_`, which proxies may read as another header's name.
    #[error(
        "header name {0:?} contains '_': proxies such as nginx read '_' as '-', so it \
         would stand for another header; write it with '-'"
    )]
    Underscore(String),
    /// A name apikeyd sets itself, or one that frames or routes the HTTP answer.
    #[error(
        "{0:?} is reserved: apikeyd sets X-Api-Key-* and the answer's own headers \
         (Content-Length, Transfer-Encoding, Connection, Date, Cache-Control, \
         Keep-Alive, TE, Trailer, Upgrade, Proxy-Connection, Retry-After, \
         WWW-Authenticate), and proxies may copy a key's headers over the request's \
         credentials, cookies, host and client address (Authorization, \
         Proxy-Authorization, X-Api-Key, Cookie, Set-Cookie, Host, Forwarded, \
         X-Forwarded-*, X-Real-IP, X-Original-URI, X-Original-URL, \
         X-Original-Method, X-Required-Scope)"
    )]
    Reserved(String),
    /// Bad characters or too long.
    #[error("value of header {0:?} must be printable ASCII of at most 1024 characters")]
    Value(String),
    /// Unknown `${...}` variable or an unclosed `${`.
    #[error("header {name:?} uses unknown variable {var:?}; known: ${{key.id}}, ${{key.name}}, ${{key.owner}}, ${{key.expires_at}}")]
    Variable {
        /// Header name.
        name: String,
        /// The variable text.
        var: String,
    },
}

/// Parse `NAME=TEMPLATE`.
pub fn parse(input: &str) -> Result<HeaderTemplate, HeaderError> {
    let (name, template) = input
        .split_once('=')
        .ok_or_else(|| HeaderError::Form(input.chars().take(80).collect()))?;
    validate(name.trim(), template)
}

/// Header names a key's templates may not set: apikeyd's own identity headers, and
/// the headers that frame the answer or manage the connection, which a second copy
/// would corrupt (a proxy reading `Transfer-Encoding: chunked` on a bodiless answer
/// would wait for a body, or take the next answer on its connection for one).
/// Also the request's credentials, cookies, host and client-address headers, and
/// the ones apikeyd's forward-auth reads: a proxy that copies auth-answer headers
/// by pattern (Traefik `authResponseHeadersRegex`, Envoy `allowed_upstream_headers`)
/// would put a key's value in place of the upstream's own (`X-Api-Key` is the
/// default `[auth] key_headers`; configured ones are not known here, see docs/concepts.md).
const RESERVED: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "cookie",
    "set-cookie",
    "host",
    "forwarded",
    "x-real-ip",
    "x-original-uri",
    "x-original-url",
    "x-original-method",
    "x-required-scope",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "date",
    "cache-control",
    "retry-after",
    "www-authenticate",
];

/// Prefixes of reserved names: apikeyd's `X-Api-Key-*` answer headers, and the
/// `X-Forwarded-*` family proxies use for the client's address, host and URI.
const RESERVED_PREFIXES: &[&str] = &["x-api-key-", "x-forwarded-"];

/// Whether two header names are the same header to a proxy: ASCII case is ignored,
/// and `_` is `-` (nginx's `$http_x_tenant` and `$upstream_http_x_tenant` match
/// `X-Tenant` and `X_Tenant` alike).
pub fn same_name(a: &str, b: &str) -> bool {
    let fold = |c: u8| match c {
        b'_' => b'-',
        c => c.to_ascii_lowercase(),
    };
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| fold(x) == fold(y))
}

/// Whether a template may not set header `name` (compared as [`same_name`] does).
pub fn reserved(name: &str) -> bool {
    RESERVED_PREFIXES
        .iter()
        .any(|pre| name.get(..pre.len()).is_some_and(|p| same_name(p, pre)))
        || RESERVED.iter().any(|r| same_name(r, name))
}

/// Whether a stored header may still be sent: validation may have been laxer when it
/// was stored (names with `_`, names reserved since).
pub fn sendable(name: &str) -> bool {
    !name.contains('_') && !reserved(name)
}

/// `list` with the headers an admin set (`admin`) first: a proxy that takes the
/// first of two same-named headers takes the admin's.
pub fn admin_first(mut list: Vec<HeaderTemplate>, admin: &[HeaderTemplate]) -> Vec<HeaderTemplate> {
    if !admin.is_empty() {
        list.sort_by_key(|h| !admin.iter().any(|a| a.same(h)));
    }
    list
}

/// Validate a name and template.
pub fn validate(name: &str, template: &str) -> Result<HeaderTemplate, HeaderError> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || name.len() > 64 || !name.bytes().all(token) {
        return Err(HeaderError::Name(name.chars().take(80).collect()));
    }
    if name.contains('_') {
        return Err(HeaderError::Underscore(name.to_owned()));
    }
    if reserved(name) {
        return Err(HeaderError::Reserved(name.to_owned()));
    }
    if template.len() > MAX_VALUE || !template.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Err(HeaderError::Value(name.to_owned()));
    }
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(HeaderError::Variable {
                name: name.to_owned(),
                var: after.chars().take(40).collect(),
            });
        };
        let var = &after[..end];
        if !VARIABLES.contains(&var) {
            return Err(HeaderError::Variable {
                name: name.to_owned(),
                var: var.to_owned(),
            });
        }
        rest = &after[end + 1..];
    }
    Ok(HeaderTemplate {
        name: name.to_owned(),
        template: template.to_owned(),
    })
}

/// Values the templates are filled with.
#[derive(Debug, Clone, Copy)]
pub struct Values<'a> {
    /// Key id.
    pub id: &'a str,
    /// Key name.
    pub name: &'a str,
    /// Owner's user name.
    pub owner: &'a str,
    /// RFC 3339 expiry, or empty for never.
    pub expires_at: &'a str,
}

impl HeaderTemplate {
    /// The same header and value, the name compared as [`same_name`] does.
    pub fn same(&self, other: &HeaderTemplate) -> bool {
        same_name(&self.name, &other.name) && self.template == other.template
    }

    /// Whether a key's owner may set this header without an admin: its value is
    /// exactly one of [`OWNER_VALUES`].
    pub fn owner_may_set(&self) -> bool {
        OWNER_VALUES.contains(&self.template.as_str())
    }

    /// The value with every variable filled. Characters a header value cannot carry
    /// (a key name is free text) are replaced by `?`.
    pub fn render(&self, v: &Values<'_>) -> String {
        let out = self
            .template
            .replace("${key.id}", v.id)
            .replace("${key.name}", v.name)
            .replace("${key.owner}", v.owner)
            .replace("${key.expires_at}", v.expires_at);
        out.chars()
            .map(|c| {
                if c == ' ' || c.is_ascii_graphic() {
                    c
                } else {
                    '?'
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn parse_and_render() {
        let h =
            parse("X-Tenant=key ${key.name} of ${key.owner} (${key.id}) until ${key.expires_at}")
                .unwrap();
        let v = Values {
            id: "ID",
            name: "sync",
            owner: "alice",
            expires_at: "2027-01-01T00:00:00Z",
        };
        assert_eq!(
            h.render(&v),
            "key sync of alice (ID) until 2027-01-01T00:00:00Z"
        );
    }

    #[test]
    fn rejects() {
        assert!(matches!(parse("novalue"), Err(HeaderError::Form(_))));
        assert!(matches!(parse("Bad Name=x"), Err(HeaderError::Name(_))));
        for reserved in [
            "X-Api-Key-Owner=x",
            "Transfer-Encoding=chunked",
            "content-length=40",
            "Connection=close",
            "Date=x",
        ] {
            assert!(
                matches!(parse(reserved), Err(HeaderError::Reserved(_))),
                "{reserved}"
            );
        }
        assert!(matches!(
            parse("X-A=${key.secret}"),
            Err(HeaderError::Variable { .. })
        ));
        assert!(matches!(
            parse("X-A=${key.id"),
            Err(HeaderError::Variable { .. })
        ));
        assert!(matches!(parse("X-A=a\nb"), Err(HeaderError::Value(_))));
        assert!(matches!(
            parse("X_Tenant=x"),
            Err(HeaderError::Underscore(_))
        ));
        assert!(parse(&format!("X-A={}", "a".repeat(1025))).is_err());
    }

    #[test]
    fn owners_may_set_only_values_apikeyd_fills_in() {
        for ok in ["X-K=${key.id}", "X-O=${key.owner}", "X-E=${key.expires_at}"] {
            assert!(parse(ok).unwrap().owner_may_set(), "{ok}");
        }
        for forged in [
            "X-Tenant=admin",
            "X-Tenant=${key.name}",
            "X-User=${key.owner}${key.owner}",
            "X-User=admin ${key.owner}",
            "X-User= ${key.owner}",
            "X-User=",
        ] {
            assert!(!parse(forged).unwrap().owner_may_set(), "{forged}");
        }
    }
}

#[cfg(test)]
mod review_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// Regression (review F2): `X_Api_Key_Owner` and `X_Api_Key_Reason` passed the
    /// reserved check, and `X_Tenant` was accepted beside an admin's `X-Tenant`;
    /// nginx reads `_` as `-`, so the owner's value could stand for either.
    #[test]
    fn names_with_underscores_are_refused_and_compared_as_proxies_do() {
        for bad in [
            "X_Api_Key_Owner=x",
            "X_Api_Key_Reason=x",
            "X_Tenant=${key.owner}",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(reserved("X_Api_Key_Owner"));
        assert!(reserved("Content_Length"));
        assert!(reserved("x-API-key-reason"));
        assert!(!reserved("X-Tenant"));
        assert!(same_name("X_Tenant", "x-tenant"));
        assert!(!same_name("X-Tenant", "X-Tenants"));
        assert!(!sendable("X_Tenant"));
        assert!(!sendable("X_Api_Key_Owner"));
        assert!(sendable("X-Tenant"));
    }

    /// Regression (second review, FC F2): an owner could set `Authorization` or
    /// `X-Api-Key` (to `${key.id}`), and `Cookie`, `Host`, `X-Forwarded-For`, ...;
    /// a proxy that copies auth-answer headers by pattern would send the key's value
    /// to the upstream in place of the request's credentials or client address.
    #[test]
    fn names_proxies_forward_or_trust_are_reserved() {
        for name in [
            "Authorization",
            "Proxy-Authorization",
            "X-Api-Key",
            "x-api-key",
            "Cookie",
            "Set-Cookie",
            "Host",
            "Forwarded",
            "X-Forwarded-For",
            "x-forwarded-uri",
            "X-Forwarded-Host",
            "X-Forwarded-Proto",
            "X-Real-IP",
            "X-Original-URI",
            "X-Original-URL",
            "X-Original-Method",
            "X-Required-Scope",
        ] {
            assert!(reserved(name), "{name}");
            assert!(!sendable(name), "{name}");
            assert!(
                matches!(
                    parse(&format!("{name}=${{key.id}}")),
                    Err(HeaderError::Reserved(_))
                ),
                "{name}"
            );
        }
        // Compared as proxies do.
        assert!(reserved("proxy_authorization") && reserved("X_FORWARDED_FOR"));
        for free in [
            "X-Tenant",
            "X-Api-Keys",
            "X-Forwarded",
            "Authorizations",
            "Hostname",
            "X-Original",
        ] {
            assert!(!reserved(free), "{free}");
        }
    }

    #[test]
    fn admin_headers_come_first() {
        let owner = parse("X-User=${key.owner}").unwrap();
        let admin = parse("X-Tenant=acme").unwrap();
        let list = admin_first(
            vec![owner.clone(), admin.clone()],
            std::slice::from_ref(&admin),
        );
        assert_eq!(list, [admin, owner]);
    }
}
