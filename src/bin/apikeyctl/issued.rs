//! A freshly issued secret (`key create`, `key rotate`): shown once, on stdout or in
//! a `*.APIKEY` file of mode 0600, and never lost when that file cannot be written.

use std::fmt::Write as _;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::bail;
use apikeyd::keys::{Issued, KeyView};
use serde::Serialize;

use crate::output::{json_text, or_never, out_text, rescue_secret, time_str};

/// The `--out` file of `key create` and `key rotate`: `FILE.APIKEY` (the suffix is
/// added unless present), created before the API call, so a name that cannot be used
/// (it exists, is a symlink, sits in a directory that is missing or not writable)
/// is refused while nothing has changed yet. Removed on drop unless the secret was
/// written to it, so a failed call leaves nothing behind.
pub struct KeyFile {
    path: PathBuf,
    file: std::fs::File,
    /// The file's identity, so drop removes only the file it created.
    dev_ino: (u64, u64),
    written: bool,
}

impl KeyFile {
    /// `not_done` says what did not happen when the file is refused ("created", "rotated").
    pub fn create(p: &Path, not_done: &str) -> anyhow::Result<Self> {
        let path = if p.extension().is_some_and(|e| e == "APIKEY") {
            p.to_path_buf()
        } else {
            let mut s = p.as_os_str().to_owned();
            s.push(".APIKEY");
            PathBuf::from(s)
        };
        // O_EXCL (create_new) refuses any existing name, a dangling symlink included;
        // O_NOFOLLOW says the same of a symlink should create_new ever be dropped.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| {
                let why = if e.kind() == std::io::ErrorKind::AlreadyExists {
                    "it already exists (a file or a symlink); refusing to overwrite a key file"
                        .to_owned()
                } else {
                    e.to_string()
                };
                anyhow::anyhow!(
                    "cannot create {}: {why}; the key was not {not_done}",
                    path.display()
                )
            })?;
        let meta = match file.metadata() {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                bail!(
                    "cannot create {}: {e}; the key was not {not_done}",
                    path.display()
                );
            }
        };
        Ok(Self {
            path,
            file,
            dev_ino: (meta.dev(), meta.ino()),
            written: false,
        })
    }

    /// Write the secret and sync it to disk.
    fn write_secret(&mut self, secret: &str) -> std::io::Result<()> {
        self.file.write_all(secret.as_bytes())?;
        self.file.write_all(b"\n")?;
        self.file.sync_all()?;
        self.written = true;
        Ok(())
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        if self.written {
            return;
        }
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.dev_ino);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Print a freshly issued key. With `--out` the secret goes to the file; should writing
/// it fail (disk full, ...), the key exists all the same, so the secret is printed on
/// stdout instead, with a warning on stderr, and the exit status is non-zero.
pub fn issued(answer: &Issued, out: Option<KeyFile>, json: bool, verb: &str) -> ExitCode {
    let (saved, failed) = match out {
        None => (None, None),
        Some(mut f) => match f.write_secret(answer.key.expose()) {
            Ok(()) => (Some(f.path.clone()), None),
            // Dropping `f` removes the partial file: it holds no usable key.
            Err(e) => (None, Some((f.path.clone(), e))),
        },
    };
    let text = issued_text(answer, saved.as_deref(), json, verb);
    match failed {
        None => {
            out_text(&text);
            ExitCode::SUCCESS
        }
        Some((path, e)) => {
            eprintln!(
                "apikeyctl: warning: cannot write the key to {}: {e}. The key was {} all the \
                 same; its secret is printed on stdout instead (shown once; store it now).",
                path.display(),
                verb.to_lowercase()
            );
            rescue_secret(&text);
            ExitCode::FAILURE
        }
    }
}

/// The `--json` answer when the secret went to a file: the key without its secret,
/// and where the secret is.
#[derive(Serialize)]
struct Saved<'a> {
    #[serde(flatten)]
    view: &'a KeyView,
    key_file: String,
}

/// What `issued` prints: the secret itself unless it was `saved` to a file.
fn issued_text(answer: &Issued, saved: Option<&Path>, json: bool, verb: &str) -> String {
    if json {
        let text = match saved {
            Some(path) => json_text(&Saved {
                view: &answer.view,
                key_file: path.display().to_string(),
            }),
            None => json_text(answer),
        };
        return text + "\n";
    }
    let v = &answer.view;
    let mut t = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(t, "{verb} key {} \"{}\" for {}", v.id, v.name, v.owner);
    let _ = writeln!(t, "  scopes:  {}", v.scopes.join(", "));
    let _ = writeln!(
        t,
        "  expires: {}",
        or_never(v.expires_at.as_deref().map(time_str))
    );
    let _ = writeln!(t, "  notify:  {}", crate::keys::notification(v));
    if let Some(n) = &v.notice {
        let _ = writeln!(t, "  note:    {n}");
    }
    match (&v.rotation, &v.rotation_grace_until) {
        (Some(r), _) => {
            let _ = writeln!(t, "  rotation: {}", r.summary);
        }
        (None, Some(g)) => {
            let _ = writeln!(
                t,
                "  the previous secret keeps working until {}",
                time_str(g)
            );
        }
        (None, None) => {}
    }
    match saved {
        Some(path) => {
            let _ = writeln!(
                t,
                "The key was written to {} (mode 0600). It is not shown again.",
                path.display()
            );
        }
        None => {
            let _ = writeln!(t, "The key (shown once; store it now):");
            let _ = writeln!(t, "{}", answer.key.expose());
        }
    }
    t
}
