//! Route matching as a whole: which route an original URI gets under every
//! reading, property-tested over spellings, and which prefixes the configuration
//! accepts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;

use super::*;

/// Regression (issue 9, item 1): an application that ignores letter case
/// (Express, ASP.NET) serves `/CATALOG/Sync/run` as `/catalog/sync/run`, and a
/// servlet container serves `/catalog;p/sync/run` there too; none of them was under the `/catalog/sync` route. Where the
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
    let mut v = Validator::new(std::path::Path::new("t.toml"));
    let c = validate_auth(&mut v, raw);
    let problems = v.finish_err().problems;
    if problems.is_empty() {
        Ok(c)
    } else {
        Err(problems.iter().map(|p| p.to_string()).collect())
    }
}

/// Any spelling of `segments`: escapes of unreserved characters (either hex
/// case), `;parameters`, letter case, and `//`, `/./`, `/x/../`, `/%2e/` between
/// segments, an absolute-form start and a query; with whether only plain `/`
/// separate the segments.
fn spellings(
    segments: &'static [&'static str],
    case_and_params: bool,
) -> impl Strategy<Value = (String, bool)> {
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
            let mut plain = true;
            for (seg, (how, param, sep)) in segments.iter().zip(parts) {
                plain &= sep == "/";
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
            (s, plain)
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
        (s, _) in spellings(&["catalog", "sync", "run"], true),
    ) {
        let c = catalog_routes();
        if let Ok(route) = c.route_of(&s) {
            prop_assert_eq!(route.map(|r| r.prefix.as_str()), Some("/catalog/sync"), "{}", s);
        }
    }

    #[test]
    fn spellings_of_other_paths_keep_theirs(
        (s, _) in spellings(&["catalog", "items"], true),
    ) {
        let c = catalog_routes();
        if let Ok(route) = c.route_of(&s) {
            prop_assert_eq!(route.map(|r| r.prefix.as_str()), Some("/catalog"), "{}", s);
        }
    }

    /// Spellings without case changes or parameters are read when only `/`
    /// separates their segments (the properties above are not met by refusing
    /// everything), and refused when `//`, `.` or `..` does (F1 of the issue 9
    /// review: applications disagree on those).
    #[test]
    fn plain_spellings_are_read(
        (s, plain) in spellings(&["catalog", "sync", "x"], false),
    ) {
        let c = catalog_routes();
        let route = c.route_of(&s).map(|r| r.map(|r| r.prefix.as_str()));
        if plain {
            prop_assert_eq!(route, Ok(Some("/catalog/sync")), "{}", s);
        } else {
            prop_assert!(
                matches!(
                    route,
                    Err(route_path::BadPath::DotSegment | route_path::BadPath::EmptySegment)
                ),
                "{} -> {:?}", s, route
            );
        }
    }
}

/// Regression (issue 9 review, F1): with only `catalog:read`, `/catalog/sync/..`
/// and its escaped and `//` spellings were matched as `/catalog/` and passed,
/// while most applications route them under `/catalog/sync`.
#[test]
fn dot_segments_after_a_protected_prefix_are_refused() {
    let c = catalog_routes();
    for uri in [
        "/catalog/sync/..",
        "/catalog/sync/%2e%2e",
        "/catalog/sync/%2E%2E/",
        "/catalog/sync//..",
        "/catalog/sync/..;",
        "/catalog/sync/.",
        "/catalog/x/../sync/run",
    ] {
        assert!(
            matches!(
                c.route_of(uri),
                Err(route_path::BadPath::DotSegment | route_path::BadPath::EmptySegment)
            ),
            "{uri}: {:?}",
            c.route_of(uri)
        );
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
    let ok = routes(&["/catalog/sync", "/catalog", "/"]).unwrap();
    assert_eq!(ok.routes[0].prefix, "/catalog/sync");
}

/// Regression (issue 9 review, F7): the prefix `/catalog/sync/` was accepted and
/// did not cover `/catalog/sync`, which a read key then passed, though most
/// frameworks serve `/catalog/sync` with the `/catalog/sync/` handler.
#[test]
fn prefixes_ending_in_a_slash_are_refused() {
    let problems = routes(&["/catalog/sync/", "/catalog"]).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("auth.routes[0].prefix")
            && problems[0].contains("ends in '/'")
            && problems[0].contains("\"/catalog/sync\""),
        "{problems:?}"
    );
}

/// Review of issue 9 (second round, F6): once any route existed, a path that
/// could not be normalised was refused site-wide, also where no reading could
/// reach a route (`/api//v2/items`, `/files/caf%C3%A9`). Those have no route now;
/// anything that could climb or be read into a route's first segment is still
/// refused.
#[test]
fn refused_paths_outside_every_route_have_no_route() {
    let c = catalog_routes();
    for uri in [
        "/api//v2/items",
        "/wiki/Washington,_D.C.",
        "/other/caf%C3%A9",
        "/files/a%2Fb",
        "/search/foo%20",
        "/other/a%25b?x=1",
        "/other/a\\b",
    ] {
        assert_eq!(c.route_of(uri), Ok(None), "{uri}");
    }
    for uri in [
        "//catalog/sync/run",
        "/x/../catalog/sync",
        "/x/%2e%2e/catalog/sync",
        "/x/%2E./catalog/sync",
        "/x\\..\\catalog/sync",
        "/x%2f..%2fcatalog/sync",
        "/x%5c%2e%2e%5ccatalog/sync",
        "/x/..;/catalog/sync",
        "/CATALOG//sync",
        "/cat%61log//sync",
        "/catalog.//sync",
        "/catalog;p//sync",
        "/.catalog//sync",
        "http://h/x//y",
        "/catalog/sync//x",
        "/admin/a%2Fb",
    ] {
        assert!(c.route_of(uri).is_err(), "{uri}: {:?}", c.route_of(uri));
    }
    // A route at the root covers every first segment.
    let root = routes(&["/", "/catalog/sync"]).unwrap();
    assert!(root.route_of("/api//v2").is_err());
}
