//! Exec plugins: an executable under the plugins directory gets the alert as JSON on
//! stdin; exit status 0 means delivered. It is killed after its timeout, and the end
//! of its stderr is kept in the job's last error.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::alerts::{Alert, DeliveryError};

/// How much of a plugin's stderr is kept.
pub const MAX_STDERR: usize = 1000;

fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.len() <= MAX_STDERR {
        return text.to_owned();
    }
    let mut start = text.len() - MAX_STDERR;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("[...]{}", &text[start..])
}

/// Run `path` with `alert` on stdin.
pub async fn run(
    path: &Path,
    name: &str,
    args: &[String],
    timeout: Duration,
    alert: &Alert,
) -> Result<(), DeliveryError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| {
        DeliveryError::transient(format!(
            "plugin {name:?} not found at {}: {e} (check [alerts] plugins_dir)",
            path.display()
        ))
    })?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(DeliveryError::transient(format!(
            "plugin {} is not an executable file",
            path.display()
        )));
    }
    let json = serde_json::to_vec(alert)
        .map_err(|e| DeliveryError::permanent(format!("cannot encode the alert: {e}")))?;
    let mut child = tokio::process::Command::new(path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("APIKEYD_JOB_ID", alert.job_id.to_string())
        .env("APIKEYD_KEY_ID", alert.key.id.to_string())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| DeliveryError::transient(format!("cannot start plugin {name:?}: {e}")))?;
    let mut stdin = child.stdin.take();
    let mut stderr = child.stderr.take();
    let work = async {
        if let Some(mut s) = stdin.take() {
            // A plugin that exits without reading its input is its own business.
            let _ = s.write_all(&json).await;
            let _ = s.shutdown().await;
        }
        let mut err = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.take(64 * 1024).read_to_end(&mut err).await;
        }
        let status = child.wait().await;
        (status, err)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok((Ok(status), err)) if status.success() => {
            if !err.is_empty() {
                tracing::debug!(plugin = name, stderr = %tail(&err), "plugin stderr");
            }
            Ok(())
        }
        Ok((Ok(status), err)) => Err(DeliveryError::transient(format!(
            "plugin {name:?} failed ({status}): {}",
            tail(&err)
        ))),
        Ok((Err(e), _)) => Err(DeliveryError::transient(format!(
            "plugin {name:?}: cannot wait for it: {e}"
        ))),
        Err(_) => Err(DeliveryError::transient(format!(
            "plugin {name:?} killed after its timeout of {}s",
            timeout.as_secs_f64()
        ))),
    }
}
