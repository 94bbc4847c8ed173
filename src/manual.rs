//! Man pages and shell completions made from a binary's clap definition, for the
//! hidden `generate-docs` subcommand of `apikeyd` and `apikeyctl` (packaging/generate.sh
//! puts them into the Debian package). clap_mangen writes the roff and clap_complete
//! the completion scripts; this module only decides the file names and layout.
//!
//! Every subcommand gets a page of its own, `apikeyctl-key-create(1)`, as git's do:
//! the parent's page lists its subcommands under those names, which is how
//! clap_mangen links them, and one page with some thirty subcommands and all their
//! options would be too long to read. Hidden subcommands get neither pages nor
//! completions.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use clap_complete::Shell;

/// Arguments of the hidden `generate-docs` subcommand.
#[derive(Debug, clap::Args)]
pub struct GenerateDocsArgs {
    /// Directory to write into: `man/manN/*.N` and `completions/{bash,zsh,fish}/`.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Writing a page or script failed.
#[derive(Debug, thiserror::Error)]
#[error("writing {}: {source}", path.display())]
pub struct ManualError {
    /// The file or directory being written.
    pub path: PathBuf,
    /// Why it failed.
    pub source: io::Error,
}

/// The file name a shell's vendor directory expects for the completions of a command.
type FileName = fn(&str) -> String;

/// The completion scripts: shell, directory under `completions/`, file name.
const SHELLS: [(Shell, &str, FileName); 3] = [
    (Shell::Bash, "bash", |name| name.to_owned()),
    (Shell::Zsh, "zsh", |name| format!("_{name}")),
    (Shell::Fish, "fish", |name| format!("{name}.fish")),
];

/// Write the man pages (in manual `section`) and the completion scripts of `cmd`
/// under `out`; returns the files written.
pub fn generate(
    cmd: clap::Command,
    section: &'static str,
    out: &Path,
) -> Result<Vec<PathBuf>, ManualError> {
    // `help` is a subcommand clap adds; as a page of its own it says nothing.
    let mut cmd = cmd.disable_help_subcommand(true);
    let mut completed = visible(&cmd);
    // Building fills in what the pages show: `apikeyctl-key-create` as the display
    // name of `create` under `key`, the version of subcommands.
    cmd.build();
    let mut written = Vec::new();
    let man_dir = out.join("man").join(format!("man{section}"));
    create_dir(&man_dir)?;
    man_pages(&cmd, section, &man_dir, &mut written)?;

    let name = cmd.get_name().to_owned();
    for (shell, dir, file_name) in SHELLS {
        let dir = out.join("completions").join(dir);
        create_dir(&dir)?;
        let path = dir.join(file_name(&name));
        write_file(&path, |w| {
            clap_complete::generate(shell, &mut completed, &name, w);
            Ok(())
        })?;
        written.push(path);
    }
    Ok(written)
}

/// `cmd` without its hidden subcommands, at any depth: clap_complete's scripts would
/// offer them (clap_mangen leaves them out itself). What a completion needs is the
/// name, the about text, the version flag, the arguments and the subcommands.
fn visible(cmd: &clap::Command) -> clap::Command {
    let mut copy = clap::Command::new(cmd.get_name().to_owned())
        .disable_help_subcommand(true)
        .args(cmd.get_arguments().cloned())
        .subcommands(
            cmd.get_subcommands()
                .filter(|s| !s.is_hide_set())
                .map(visible),
        );
    if let Some(about) = cmd.get_about() {
        copy = copy.about(about.clone());
    }
    if let Some(version) = cmd.get_version() {
        copy = copy.version(version.to_owned());
    }
    copy
}

fn man_pages(
    cmd: &clap::Command,
    section: &'static str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<(), ManualError> {
    let man = clap_mangen::Man::new(cmd.clone()).section(section);
    let path = dir.join(man.get_filename());
    write_file(&path, |w| man.render(w))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_pages(sub, section, dir, written)?;
    }
    Ok(())
}

fn create_dir(dir: &Path) -> Result<(), ManualError> {
    std::fs::create_dir_all(dir).map_err(|source| ManualError {
        path: dir.to_owned(),
        source,
    })
}

fn write_file(
    path: &Path,
    body: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<(), ManualError> {
    let wrap = |source| ManualError {
        path: path.to_owned(),
        source,
    };
    let mut w = BufWriter::new(File::create(path).map_err(wrap)?);
    body(&mut w).map_err(wrap)?;
    w.flush().map_err(wrap)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    /// apikeyd.toml(5) is written by hand: a table or key added to the loader
    /// without a line in the page fails here.
    #[test]
    fn config_page_describes_every_table_and_key() {
        let page = include_str!("../packaging/man/apikeyd.toml.5");
        let mut missing = Vec::new();
        for (table, keys) in crate::config::documented_keys() {
            let heads = [format!("[{table}]"), format!("[{table}.NAME]")];
            let Some(section) = page
                .split("\n.SH ")
                .find(|s| heads.iter().any(|h| s.lines().next() == Some(h.as_str())))
            else {
                missing.push(format!("[{table}]"));
                continue;
            };
            for key in keys {
                // `routes.prefix`: the item keys of an array of tables.
                let name = key.rsplit('.').next().unwrap();
                if !section.lines().any(|l| l == format!(".B {name}")) {
                    missing.push(format!("{table}.{key}"));
                }
            }
        }
        assert!(missing.is_empty(), "apikeyd.toml(5) lacks {missing:?}");
    }
}
