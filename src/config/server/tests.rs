//! `[server]` tests. They load whole files with the parser of `config`, which
//! imports this section, so they live in a file of their own rather than inside it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::config::{from_text, parse, Environment};
use std::path::{Path, PathBuf};

#[test]
fn header_read_timeout_is_a_short_fixed_period() {
    let c = from_text("").unwrap();
    assert_eq!(
        c.server.header_read_timeout,
        std::time::Duration::from_secs(30)
    );
    let c = from_text("[server]\nheader_read_timeout = \"pt2m30s\"\n").unwrap();
    assert_eq!(
        c.server.header_read_timeout,
        std::time::Duration::from_secs(150)
    );
    for bad in ["p1m", "pt2h", "pt0.5s", "", "30"] {
        let err = from_text(&format!("[server]\nheader_read_timeout = \"{bad}\"\n")).unwrap_err();
        let keys: Vec<_> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["server.header_read_timeout"], "{bad}: {err}");
    }
}

#[test]
fn connection_limits_and_idle_timeout_are_checked() {
    let c = from_text("").unwrap();
    assert_eq!(c.server.idle_timeout, std::time::Duration::from_secs(300));
    assert_eq!(
        (
            c.server.max_connections,
            c.server.max_connections_per_client
        ),
        (10_000, 1_000)
    );
    assert_eq!(c.rate_limit.ipv6_prefix, 64);
    let c = from_text(
        "[server]\nidle_timeout = \"pt1s\"\nmax_connections = 10\n\
         [rate_limit]\nipv6_prefix = 128\n",
    )
    .unwrap();
    assert_eq!(c.server.idle_timeout, std::time::Duration::from_secs(1));
    // The default per-client limit follows a smaller total.
    assert_eq!(
        (
            c.server.max_connections,
            c.server.max_connections_per_client
        ),
        (10, 10)
    );
    assert_eq!(c.rate_limit.ipv6_prefix, 128);
    for (bad, key) in [
        ("[server]\nidle_timeout = \"p1m\"", "server.idle_timeout"),
        ("[server]\nidle_timeout = \"p2d\"", "server.idle_timeout"),
        ("[server]\nidle_timeout = \"pt0s\"", "server.idle_timeout"),
        ("[server]\nmax_connections = 0", "server.max_connections"),
        (
            "[server]\nmax_connections_per_client = 0",
            "server.max_connections_per_client",
        ),
        (
            "[server]\nmax_connections = 10\nmax_connections_per_client = 11",
            "server.max_connections_per_client",
        ),
        ("[rate_limit]\nipv6_prefix = 16", "rate_limit.ipv6_prefix"),
        ("[rate_limit]\nipv6_prefix = 129", "rate_limit.ipv6_prefix"),
    ] {
        let err = from_text(bad).unwrap_err();
        let keys: Vec<_> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, [key], "{bad}: {err}");
    }
}

#[test]
fn systemd_directories_replace_relative_paths() {
    let env = Environment {
        state_directory: Some("/var/lib/apikeyd".into()),
        runtime_directory: Some("/run/apikeyd".into()),
        credentials_directory: None,
    };
    let c = parse(
        Path::new("x.toml"),
        "[server]\nstate_dir = \"var\"\nadmin_socket = \"var/apikeyd.sock\"\n",
        &env,
    )
    .unwrap();
    assert_eq!(c.server.state_dir, PathBuf::from("/var/lib/apikeyd"));
    assert_eq!(
        c.server.admin_socket,
        PathBuf::from("/run/apikeyd/apikeyd.sock")
    );
    assert_eq!(
        c.server.secret_file,
        PathBuf::from("/var/lib/apikeyd/server.secret")
    );
}
