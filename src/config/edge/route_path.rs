//! The path `[[auth.routes]]` are matched against: the original URI a proxy forwards,
//! read as the application behind it will read it. A path that different
//! applications could read differently is refused rather than guessed at, so no
//! spelling of a protected path can be matched to a weaker route.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

/// Why a forwarded URI cannot be matched against routes. Each is answered
/// `400 BAD_PATH` while routes are configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadPath {
    /// A URI header is present but its value is not visible ASCII.
    #[error("the URI header is not visible ASCII text")]
    Unreadable,
    /// The URI headers (or the path appended to `/v1/auth/`) disagree.
    #[error("the URI headers carry different values")]
    Conflicting,
    /// Not `/path` or `http(s)://authority/path`, or a raw `#` in the path.
    #[error("not an origin-form path or an http(s) URL")]
    NotAPath,
    /// A backslash, which some servers read as a slash.
    #[error("a backslash in the path")]
    Backslash,
    /// An invalid escape (`%zz`, `%4`) or the escape of a character that
    /// separates or ends paths (`%2F`, `%5C`, `%3B`, `%3F`, `%23`, `%25`).
    #[error("an invalid percent-escape or an escaped '/', '\\', ';', '?', '#' or '%'")]
    Escape,
    /// An escaped control or non-ASCII byte (`%00`, `%C3%A9`): decoders and
    /// Unicode normalisation differ between applications.
    #[error("an escaped control or non-ASCII byte")]
    Byte,
    /// A segment ending in `.` or a space besides `.` and `..`, which Windows
    /// servers drop.
    #[error("a path segment ending in '.' or ' '")]
    TrailingDot,
    /// A `.` or `..` segment (also escaped, or with `;parameters`): some
    /// applications resolve them, most route `/a/..` under `/a`.
    #[error("a '.' or '..' path segment")]
    DotSegment,
    /// An empty segment other than the last (`//`): some applications merge
    /// slashes, others keep the empty segment, and URL parsers then resolve
    /// `//..` differently.
    #[error("an empty path segment ('//')")]
    EmptySegment,
    /// Routes are configured but the request names no original URI (no URI
    /// header, no path after `/v1/auth/`): a proxy that does not send one would
    /// otherwise get every request through under no route.
    #[error("no original URI")]
    NoUri,
    /// The route would depend on letter case or on `;parameters`, which
    /// applications read differently ([`super::AuthConfig::route_of`]).
    #[error("the route depends on letter case or on ';parameters'")]
    Ambiguous,
}

/// What becomes of `;parameters` in a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Params {
    /// Dropped, as servlet containers and Spring read them: `/a;x/b` is `/a/b`.
    Drop,
    /// Kept as part of the segment, as most other applications read them. The
    /// segment keeps only a `;` after its name, which no route prefix has, so it
    /// matches no prefix segment. (`..;` is refused under either reading.)
    Keep,
}

/// `uri` (`/path?query`, or `http(s)://host/path?query`) reduced to its path, with
/// escapes of plain characters decoded and `;parameters` dropped from each segment;
/// `.` and `..` segments and empty segments but the last are refused, not resolved.
/// A path that is already in
/// that form is returned borrowed: the usual case costs one pass and no allocation.
/// Letter case is kept ([`super::AuthConfig::route_of`] reads it both ways), and
/// `%20` comes out as a space, so the result is for matching, not for sending on.
pub fn normalise(uri: &str) -> Result<Cow<'_, str>, BadPath> {
    normalise_with(uri, Params::Drop)
}

/// [`normalise`], with `;parameters` read as `params` says.
pub fn normalise_with(uri: &str, params: Params) -> Result<Cow<'_, str>, BadPath> {
    // What proxies send nearly always: checked and cut in one pass over the bytes.
    if let Some(end) = normal_path_end(uri.as_bytes()) {
        return Ok(Cow::Borrowed(&uri[..end]));
    }
    if !uri.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(BadPath::Unreadable);
    }
    let path = strip_authority(uri)?;
    let end = path.find(['?', '#']).unwrap_or(path.len());
    if path.as_bytes().get(end) == Some(&b'#') {
        // Clients never send a fragment; an application that takes `#` as part of
        // the path would resolve `/public#/../private` differently.
        return Err(BadPath::NotAPath);
    }
    let path = &path[..end];
    if path.is_empty() {
        return Ok(Cow::Borrowed("/"));
    }
    if is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    decode_segments(path, params).map(Cow::Owned)
}

/// The part of `uri` from its path on: origin-form as it is; absolute-form
/// (`http://host/path`, which HTTP/1.1 servers must accept and proxies pass on as
/// the request URI) without scheme and authority, an empty path being `/`.
fn strip_authority(uri: &str) -> Result<&str, BadPath> {
    if uri.starts_with('/') {
        return Ok(uri);
    }
    let rest = ["http://", "https://"]
        .iter()
        .find_map(|scheme| {
            uri.get(..scheme.len())
                .filter(|s| s.eq_ignore_ascii_case(scheme))
                .map(|_| &uri[scheme.len()..])
        })
        .ok_or(BadPath::NotAPath)?;
    let at = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if at == 0 || rest[..at].contains('\\') {
        return Err(BadPath::NotAPath);
    }
    let path = &rest[at..];
    if path.starts_with('/') {
        Ok(path)
    } else if path.starts_with('#') {
        Err(BadPath::NotAPath)
    } else {
        Ok("")
    }
}

/// Where the path of `uri` ends (at `?` or the end) when `uri` is visible ASCII in
/// origin form and its path needs no work: no escapes, parameters, backslashes or
/// `#`, and no segment that is empty (but the last) or ends in `.` (dot segments
/// and Windows' trailing dots). `None` sends `uri` the slow way.
fn normal_path_end(uri: &[u8]) -> Option<usize> {
    if uri.first() != Some(&b'/') {
        return None;
    }
    let mut prev = b'/';
    let mut end = uri.len();
    for (i, &b) in uri.iter().enumerate().skip(1) {
        match b {
            b'?' => {
                end = i;
                break;
            }
            b'/' if prev == b'/' || prev == b'.' => return None,
            b'%' | b';' | b'\\' | b'#' => return None,
            _ if !b.is_ascii_graphic() => return None,
            _ => prev = b,
        }
    }
    // In the query nothing matters but that it is text.
    (prev != b'.' && uri[end..].iter().all(u8::is_ascii_graphic)).then_some(end)
}

/// Whether `path` (no query) needs no work ([`normal_path_end`]).
fn is_normal(path: &str) -> bool {
    normal_path_end(path.as_bytes()) == Some(path.len())
}

/// The slow path of [`normalise`], segment by segment.
fn decode_segments(path: &str, params: Params) -> Result<String, BadPath> {
    let mut out = String::with_capacity(path.len());
    let raw_segments = path.strip_prefix('/').ok_or(BadPath::NotAPath)?;
    let mut segments = raw_segments.split('/').peekable();
    while let Some(raw) = segments.next() {
        let last = segments.peek().is_none();
        if raw.contains('\\') {
            return Err(BadPath::Backslash);
        }
        // `;parameters` end at the next `/` (RFC 3986 3.3; servlet containers and
        // Spring drop them before routing, so `/a;x/b` reaches `/a/b`).
        let (raw, has_params) = match raw.split_once(';') {
            Some((name, _)) => (name, true),
            None => (raw, false),
        };
        let decoded: Cow<'_, [u8]> = percent_decode_str(raw).into();
        for &b in decoded.iter() {
            if !(b' '..=b'~').contains(&b) {
                return Err(BadPath::Byte);
            }
            // A `%` left over is an invalid escape (the decoder keeps those as
            // they are) or a decoded `%25`, which a second decoding would change.
            if matches!(b, b'/' | b'\\' | b';' | b'?' | b'#' | b'%') {
                return Err(BadPath::Escape);
            }
        }
        // Applications disagree on `.`, `..` and `//`: most routers take them
        // as they come (`/a/..` is routed under `/a`), some resolve them, WHATWG
        // URL parsers keep `//` but resolve `..`. No one reading is the safe one,
        // so none is chosen.
        match &decoded[..] {
            b"." | b".." => return Err(BadPath::DotSegment),
            b"" if !last => return Err(BadPath::EmptySegment),
            s if s.ends_with(b".") || s.ends_with(b" ") => return Err(BadPath::TrailingDot),
            _ => {}
        }
        out.push('/');
        // Checked above: printable ASCII.
        out.extend(decoded.iter().map(|&b| char::from(b)));
        if has_params && params == Params::Keep {
            out.push(';');
        }
    }
    Ok(out)
}

/// The query of `uri` (after `?`, up to a `#`), if it has one.
pub fn query(uri: &str) -> Option<&str> {
    let (_, rest) = uri.split_once('?')?;
    Some(rest.split('#').next().unwrap_or(rest))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    fn norm(s: &str) -> Result<String, BadPath> {
        normalise(s).map(Cow::into_owned)
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in [
            "/",
            "/catalog",
            "/catalog/sync/run",
            "/catalog/",
            "/a/b.c/d",
        ] {
            assert!(
                matches!(normalise(p), Ok(Cow::Borrowed(b)) if b == p),
                "{p}"
            );
        }
        assert!(matches!(normalise("/a/b?x=%zz"), Ok(Cow::Borrowed("/a/b"))));
    }

    /// Regression (issue 9, item 1): route prefixes were compared with the raw
    /// forwarded URI, so `/catalog/%73ync/run` and other spellings the application
    /// reads as `/catalog/sync/run` escaped the `/catalog/sync` route.
    #[test]
    fn spellings_of_one_path_normalise_to_it() {
        for s in [
            "/catalog/sync/run",
            "/catalog/%73ync/run",
            "/catalog/%73%79%6E%63/run",
            "/catalog;p/sync/run",
            "/catalog/sync;jsessionid=1/run",
            "/catalog/sync/run?x=/../admin",
            "/catalog/sync/run?x=//a",
            "http://example.com/catalog/sync/run",
            "HTTPS://example.com:443/catalog/sync/run?q",
        ] {
            assert_eq!(norm(s).as_deref(), Ok("/catalog/sync/run"), "{s}");
        }
        assert_eq!(norm("/catalog/sync/"), Ok("/catalog/sync/".into()));
        assert_eq!(norm("/catalog/sync/;x"), Ok("/catalog/sync/".into()));
        assert_eq!(norm("/"), Ok("/".into()));
        assert_eq!(norm("http://h"), Ok("/".into()));
        assert_eq!(norm("http://h?x"), Ok("/".into()));
        assert_eq!(norm("/a%20b/c"), Ok("/a b/c".into()));
        assert_eq!(norm("/a%40b"), Ok("/a@b".into()));
        assert_eq!(
            normalise_with("/catalog;p/sync/run", Params::Keep),
            Ok("/catalog;/sync/run".into())
        );
    }

    /// Regression (issue 9 review, F1): `.`, `..` and `//` were resolved, so
    /// `/catalog/sync/..` was matched as `/catalog/` and passed with a
    /// `catalog:read` key, though most applications (Express, Django, Rails,
    /// Werkzeug) route it under `/catalog/sync`, and WHATWG URL parsers read
    /// `/catalog/sync//..` as `/catalog/sync/`. They are refused now.
    #[test]
    fn dot_and_empty_segments_are_refused() {
        use BadPath::*;
        for (s, why) in [
            ("/catalog/sync/..", DotSegment),
            ("/catalog/sync/../", DotSegment),
            ("/catalog/sync/%2e%2e", DotSegment),
            ("/catalog/sync/%2E%2E/", DotSegment),
            ("/catalog/sync/.%2e", DotSegment),
            ("/catalog/sync/..;", DotSegment),
            ("/catalog/sync/..;x/", DotSegment),
            ("/catalog/sync/.", DotSegment),
            ("/catalog/./sync/run", DotSegment),
            ("/catalog/%2e/sync/run", DotSegment),
            ("/catalog/x/../sync/run", DotSegment),
            ("/..", DotSegment),
            ("/.", DotSegment),
            ("/catalog/sync//..", EmptySegment),
            ("//catalog/sync/run", EmptySegment),
            ("/catalog//sync/run", EmptySegment),
            ("/catalog/;x/sync", EmptySegment),
            ("/;x/catalog/sync/run", EmptySegment),
            ("//", EmptySegment),
            ("http://h//catalog", EmptySegment),
        ] {
            assert_eq!(norm(s), Err(why), "{s:?}");
            assert_eq!(normalise_with(s, Params::Keep), Err(why), "{s:?}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        use BadPath::*;
        for (s, why) in [
            ("/catalog/sync%2frun", Escape),
            ("/catalog/sync%2Frun", Escape),
            ("/catalog%5csync/run", Escape),
            ("/catalog\\sync/run", Backslash),
            ("/catalog/sync%3brun", Escape),
            ("/catalog/sync%3F/run", Escape),
            ("/catalog/sync%23/run", Escape),
            ("/catalog/%2573ync/run", Escape),
            ("/catalog/%zzsync", Escape),
            ("/catalog/sync%4", Escape),
            ("/catalog/sync%", Escape),
            ("/catalog/%u0073ync", Escape),
            ("/catalog/sync%00/run", Byte),
            ("/catalog/sync%0a/run", Byte),
            ("/catalog/sync%7f/run", Byte),
            ("/catalog/caf%C3%A9", Byte),
            ("/catalog/%c0%af/sync", Byte),
            ("/catalog/syn\u{e7}", Unreadable),
            ("/catalog/sync run", Unreadable),
            ("/catalog/sync\trun", Unreadable),
            ("/catalog/sync\0", Unreadable),
            ("", NotAPath),
            ("*", NotAPath),
            ("catalog/sync", NotAPath),
            ("ftp://h/catalog", NotAPath),
            ("http:///catalog", NotAPath),
            ("/public#/../catalog/sync/run", NotAPath),
            ("/catalog./sync/run", TrailingDot),
            ("/catalog/sync%20/run", TrailingDot),
            ("/catalog/sync.../run", TrailingDot),
        ] {
            assert_eq!(norm(s), Err(why), "{s:?}");
        }
        // In the query nothing matters but that it is text.
        assert_eq!(norm("/a?%zz\\#x"), Ok("/a".into()));
    }

    #[test]
    fn queries() {
        assert_eq!(query("/a?k=v#f"), Some("k=v"));
        assert_eq!(query("/a?"), Some(""));
        assert_eq!(query("/a"), None);
    }

    proptest! {
        /// Whatever normalise returns is a fixed point and already normal, so it
        /// takes the borrowed path when seen again.
        #[test]
        fn normal_form_is_stable(s in "[/a-zA-Z.;%2eEfF3B~-]{0,24}") {
            if let Ok(n) = normalise(&s) {
                prop_assert!(n.starts_with('/'));
                prop_assert!(is_normal(&n), "{:?} -> {:?}", s, n);
                prop_assert!(matches!(normalise(&n), Ok(Cow::Borrowed(_))));
            }
        }
    }
}
