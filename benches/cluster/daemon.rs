//! Part 5: the real `apikeyd` started on the N-key database, PostgreSQL against
//! redb: spawn until it prints its `listening` line (keys loaded, listeners
//! bound, alerts and maintenance started).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::measure::secs;

const APIKEYD: &str = env!("CARGO_BIN_EXE_apikeyd");

/// A configuration in `dir` for the given `[store]` table (empty: redb in
/// `dir/state`).
pub(crate) fn config(dir: &Path, store: &str) -> PathBuf {
    let state = dir.join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
state_dir = "{state}"
admin_socket = "{sock}"

[groups.Admin]
scopes = ["apikeyd:admin"]
create_keys = true
manage_all_keys = true

[users.admin]
groups = ["Admin"]
unix_user = "root"

{store}
"#,
        state = state.display(),
        sock = dir.join("apikeyd.sock").display(),
    );
    let path = dir.join("apikeyd.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Seconds from spawn to the `listening` line; the daemon is stopped after.
pub(crate) fn start(config: &Path) -> f64 {
    let t = Instant::now();
    let mut child = Command::new(APIKEYD)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn apikeyd");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read apikeyd's stdout");
    let took = secs(t.elapsed());
    assert!(
        line.contains("listening"),
        "apikeyd did not start: {line:?}"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    took
}
