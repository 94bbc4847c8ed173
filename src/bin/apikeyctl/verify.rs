//! `verify`: check a key as a service would; exit 0 only for VALID.

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use apikeyd::api::VerifyResponse;
use apikeyd::client::Client;
use clap::Args;
use hyper::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::output::{or_empty, print_json};

// No doc comment: clap would take it for the subcommand's description.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// "-" to read the key from stdin (preferred: an argument is visible to every
    /// local user, e.g. in `ps`), or the key itself.
    key: String,
    /// Client address to check against the key's IP filters.
    #[arg(long)]
    ip: Option<String>,
    /// Scope the request needs.
    #[arg(long)]
    scope: Option<String>,
    /// Print the full answer as JSON.
    #[arg(long)]
    json: bool,
}

/// The body of `POST /v1/verify`.
#[derive(Serialize)]
struct VerifyRequest<'a> {
    key: &'a str,
    scope: Option<&'a str>,
    ip: Option<&'a str>,
}

/// `verify`.
pub async fn verify(client: &Client, a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let key = if a.key == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s.trim().to_owned()
    } else {
        a.key
    };
    let req = VerifyRequest {
        key: &key,
        scope: a.scope.as_deref(),
        ip: a.ip.as_deref(),
    };
    // Kept as it came for --json: the typed answer cannot tell an expiry of null
    // (never) from an absent one, and would drop the former.
    let raw: Value = client.send(Method::POST, "/v1/verify", &req).await?;
    let answer = VerifyResponse::deserialize(&raw)
        .context("unexpected answer from apikeyd to /v1/verify")?;
    if a.json {
        print_json(&raw);
    } else if answer.valid {
        println!(
            "VALID: key {} \"{}\" of {}",
            or_empty(answer.id),
            or_empty(answer.name),
            or_empty(answer.owner)
        );
    } else {
        println!("{}", answer.code.as_str());
    }
    Ok(if answer.valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
