//! Route matching as a whole: which route an original URI gets under every
//! reading, property-tested over spellings, and which prefixes the configuration
//! accepts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;

use super::*;

/// Regression (issue 9, item 1): an application that ignores letter case
/// (Express, ASP.NET) serves `/CATALOG/Sync/run` as `/catalog/sync/run`, and a
/// servlet container serves `/catalog;p/sync/run` and `/catalog/x/..;/sync/run`
/// there too; none of them was under the `/catalog/sync` route. Where the
/// readings give different routes the path is refused; where they agree it is
/// matched.
#[test]
fn case_and_parameters_that_change_the_route_are_refused() {
    let c = catalog_routes();
    let route = |uri: &str| c.route_of(uri).map(|r| r.map(|r| r.prefix.clone()));
    for uri in [
        "/CATALOG/Sync/run",
        "/catalog/SYNC",
        "/Catalog/items",
        "/catalog;p/sync/run",
        "/catalog/x/..;/sync/run",
        "/catalog/sync/..;/items",
        "/catalog/sync;x/run",
        "/ADMIN",
    ] {
        assert_eq!(route(uri), Err(route_path::BadPath::Ambiguous), "{uri}");
    }
    for (uri, want) in [
        ("/catalog/sync/run", Some("/catalog/sync")),
        ("/catalog/sync/RUN;jsessionid=1", Some("/catalog/sync")),
        ("/catalog/items;v=2", Some("/catalog")),
        ("/catalog/Items", Some("/catalog")),
        ("/catalog/synced", Some("/catalog")),
        ("/PUBLIC;x/y", None),
        ("/x/..;/y", None),
    ] {
        assert_eq!(route(uri), Ok(want.map(str::to_owned)), "{uri}");
    }
}

fn routes(prefixes: &[&str]) -> Result<AuthConfig, Vec<String>> {
    let raw = RawAuth {
        routes: prefixes
            .iter()
            .map(|p| RawRoute {
                prefix: (*p).to_owned(),
                scope: Some("catalog:sync".into()),
            })
            .collect(),
        ..RawAuth::default()
    };
    let mut v = Validator {
        file: "t.toml".into(),
        problems: Vec::new(),
    };
    let c = validate_auth(&mut v, raw);
    if v.problems.is_empty() {
        Ok(c)
    } else {
        Err(v.problems.iter().map(|p| p.to_string()).collect())
    }
}

/// Any spelling of `segments`: escapes of unreserved characters (either hex
/// case), `;parameters`, letter case, and `//`, `/./`, `/x/../`, `/%2e/` between
/// segments, an absolute-form start and a query.
fn spellings(
    segments: &'static [&'static str],
    case_and_params: bool,
) -> impl Strategy<Value = String> {
    let n = segments.len();
    let (how, param) = if case_and_params {
        (0u8..4, prop::option::of("[a-z=0-9]{0,3}").boxed())
    } else {
        (0u8..1, Just(None).boxed())
    };
    (
        prop::collection::vec(
            (
                prop::collection::vec(prop_oneof![how, 2u8..4], 16),
                param,
                prop::sample::select(vec!["/", "//", "/./", "/x/../", "/%2e/", "/x/%2E%2e/"]),
            ),
            n,
        ),
        any::<bool>(),
        prop::option::of("[a-z=&/.%]{0,6}"),
    )
        .prop_map(move |(parts, absolute, query)| {
            let mut s = if absolute {
                "http://h".to_owned()
            } else {
                String::new()
            };
            for (seg, (how, param, sep)) in segments.iter().zip(parts) {
                s.push_str(sep);
                for (c, h) in seg.chars().zip(how) {
                    match h {
                        0 => s.push(c),
                        1 => s.push(c.to_ascii_uppercase()),
                        2 => s.push_str(&format!("%{:02x}", u32::from(c))),
                        _ => s.push_str(&format!("%{:02X}", u32::from(c))),
                    }
                }
                if let Some(p) = param {
                    s.push(';');
                    s.push_str(&p);
                }
            }
            if let Some(q) = query {
                s.push('?');
                s.push_str(&q);
            }
            s
        })
}

fn catalog_routes() -> AuthConfig {
    routes(&["/catalog", "/catalog/sync", "/admin"]).unwrap()
}

proptest! {
    /// Regression (issue 9, item 1): every spelling of a path under
    /// `/catalog/sync` that an application may read as that path is either
    /// refused or matched to that route, never to `/catalog` or none.
    #[test]
    fn spellings_of_a_protected_path_keep_its_route(
        s in spellings(&["catalog", "sync", "run"], true),
    ) {
        let c = catalog_routes();
        if let Ok(route) = c.route_of(&s) {
            prop_assert_eq!(route.map(|r| r.prefix.as_str()), Some("/catalog/sync"), "{}", s);
        }
    }

    #[test]
    fn spellings_of_other_paths_keep_theirs(
        s in spellings(&["catalog", "items"], true),
    ) {
        let c = catalog_routes();
        if let Ok(route) = c.route_of(&s) {
            prop_assert_eq!(route.map(|r| r.prefix.as_str()), Some("/catalog"), "{}", s);
        }
    }

    /// Spellings without case changes or parameters are not refused: the
    /// properties above are not met by refusing everything.
    #[test]
    fn plain_spellings_are_read(s in spellings(&["catalog", "sync", "x"], false)) {
        let c = catalog_routes();
        let route = c.route_of(&s).map(|r| r.map(|r| r.prefix.as_str()));
        prop_assert_eq!(route, Ok(Some("/catalog/sync")), "{}", s);
    }
}

/// Prefixes are compared with normalised paths, so a prefix that is not one
/// could never match: it is refused at load instead of protecting nothing.
#[test]
fn route_prefixes_must_be_normal_paths() {
    for bad in [
        "catalog",
        "/catalog//sync",
        "/catalog/./sync",
        "/catalog/x/../sync",
        "/catalog;p",
        "/catalog/%73ync",
        "/catalog?x",
        "/caf\u{e9}",
        "/catalog sync",
        "/catalog\\sync",
        "/catalog./sync",
    ] {
        let problems = routes(&[bad]).expect_err(bad);
        assert!(
            problems[0].contains("auth.routes[0].prefix"),
            "{bad}: {problems:?}"
        );
    }
    assert!(routes(&["/Catalog", "/catalog"]).unwrap_err()[0].contains("listed twice"));
    let ok = routes(&["/catalog/sync/", "/catalog"]).unwrap();
    assert_eq!(ok.routes[0].prefix, "/catalog/sync/");
}
