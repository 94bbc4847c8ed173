//! The man pages and shell completions that the hidden `generate-docs` subcommand of
//! each binary writes (packaging/generate.sh puts them into the Debian package): a page
//! for every subcommand that `--help` lists, roff with NAME and SYNOPSIS that `man`
//! renders without warnings, each parent page naming its subcommands, and completions
//! for bash, zsh and fish that offer every subcommand. Hidden subcommands stay out.
//! The subcommands are read from the binaries' own `--help`, so a new one is covered
//! without touching this file.
//!
//! Rendering needs `man` (man-db, in the CI image); see `util::require`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use crate::util::{require, stdout, APIKEYCTL, APIKEYD};

/// The subcommand names under `Commands:` in `BIN ARGS... --help`.
fn subcommands(bin: &str, path: &[String]) -> Vec<String> {
    let out = Command::new(bin).args(path).arg("--help").output().unwrap();
    assert!(out.status.success(), "{bin} {path:?} --help failed");
    stdout(&out)
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// Every command path of `bin`, the binary itself first: `[]`, `["key"]`,
/// `["key", "create"]`, ...
fn command_paths(bin: &str) -> Vec<Vec<String>> {
    let mut out = vec![Vec::new()];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i].clone();
        for sub in subcommands(bin, &parent) {
            let mut path = parent.clone();
            path.push(sub);
            out.push(path);
        }
        i += 1;
    }
    out
}

fn generate(bin: &str, out: &Path) {
    let o = Command::new(bin)
        .args(["generate-docs", "--out"])
        .arg(out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{bin} generate-docs: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn check_binary(bin: &str, name: &str, section: &str, out: &Path, render: bool) {
    let paths = command_paths(bin);
    assert!(paths.len() > 1, "{name} --help lists no subcommands");
    let man_dir = out.join("man").join(format!("man{section}"));
    let mut pages: Vec<String> = std::fs::read_dir(&man_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    let mut expected: Vec<String> = paths
        .iter()
        .map(|p| {
            let mut parts = vec![name.to_owned()];
            parts.extend(p.iter().cloned());
            format!("{}.{section}", parts.join("-"))
        })
        .collect();
    expected.sort();
    // Also no page for a hidden subcommand (generate-docs, seed-keys).
    assert_eq!(pages, expected, "{name}: pages against --help");

    for path in &paths {
        let stem = std::iter::once(name.to_owned())
            .chain(path.iter().cloned())
            .collect::<Vec<_>>()
            .join("-");
        let file = man_dir.join(format!("{stem}.{section}"));
        let roff = std::fs::read_to_string(&file).unwrap();
        for heading in [".SH NAME", ".SH SYNOPSIS"] {
            assert!(roff.contains(heading), "{} lacks {heading}", file.display());
        }
        // A parent's page names each subcommand as the page it has.
        for sub in subcommands(bin, path) {
            // roff writes every '-' of the name as "\-".
            let page = format!("{stem}-{sub}").replace('-', "\\-");
            assert!(
                roff.contains(&page),
                "{} does not name {page}",
                file.display()
            );
        }
        if render {
            let o = Command::new("man")
                .args(["--warnings", "-l"])
                .arg(&file)
                .env("MANWIDTH", "80")
                .output()
                .unwrap();
            assert!(o.status.success(), "man -l {} failed", file.display());
            let warnings = String::from_utf8_lossy(&o.stderr);
            assert!(
                warnings.trim().is_empty(),
                "man -l {} warns: {warnings}",
                file.display()
            );
            assert!(stdout(&o).contains("SYNOPSIS"), "{}", file.display());
        }
    }

    let names: Vec<&String> = paths.iter().filter_map(|p| p.last()).collect();
    for script in [
        format!("bash/{name}"),
        format!("zsh/_{name}"),
        format!("fish/{name}.fish"),
    ] {
        let text = std::fs::read_to_string(out.join("completions").join(&script)).unwrap();
        for sub in &names {
            assert!(text.contains(sub.as_str()), "{script} lacks {sub}");
        }
        for hidden in ["generate-docs", "seed-keys"] {
            assert!(!text.contains(hidden), "{script} offers {hidden}");
        }
    }
}

#[test]
fn generated_man_pages_and_completions_cover_every_subcommand() {
    let render = require(
        "man (man-db) to render the pages",
        Command::new("man").arg("--version").output().is_ok(),
    );
    let dir = tempfile::tempdir().unwrap();
    generate(APIKEYD, dir.path());
    generate(APIKEYCTL, dir.path());
    check_binary(APIKEYD, "apikeyd", "8", dir.path(), render);
    check_binary(APIKEYCTL, "apikeyctl", "1", dir.path(), render);
}

/// The hand-written apikeyd.toml(5) renders without warnings too (its completeness is
/// a unit test in src/manual.rs).
#[test]
fn config_man_page_renders() {
    if !require(
        "man (man-db) to render the page",
        Command::new("man").arg("--version").output().is_ok(),
    ) {
        return;
    }
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/man/apikeyd.toml.5");
    let o = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(&page)
        .env("MANWIDTH", "80")
        .output()
        .unwrap();
    assert!(o.status.success());
    let warnings = String::from_utf8_lossy(&o.stderr);
    assert!(warnings.trim().is_empty(), "man -l warns: {warnings}");
    assert!(stdout(&o).contains("apikeyd.toml - configuration file"));
}
