//! `apikeyctl plan`: what will happen to your keys (an admin's: everyone's, and
//! the maintenance runs) within a window, by day and owner; with `--policy FILE`,
//! how that configuration would change the keys, compared with the one in force,
//! without applying it. The file is read here, as the caller; the daemon only
//! validates its text.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use apikeyd::client::Client;
use apikeyd::keys::plan::{Event, EventKind, KeyChange, Plan, PolicyPlan};
use chrono::{DateTime, SubsecRound, Utc};
use clap::Args;
use hyper::Method;
use serde_json::json;

use crate::output::{day_and_time, print_json, show_time, wire_name as wire, Precision};
use crate::urlencode;

// No doc comment: clap would take it for the subcommand's description.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// How far ahead to look (ISO 8601 period, e.g. p30d, p2w, p3m).
    #[arg(long, default_value = "p30d")]
    within: String,
    /// Compare this configuration file with the one in force, without applying it
    /// (admins; run it before `systemctl reload apikeyd`).
    #[arg(long, value_name = "NEW.toml")]
    policy: Option<PathBuf>,
    /// List at most this many entries (the earliest; the totals count them all).
    #[arg(long)]
    limit: Option<usize>,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

/// `plan`.
pub async fn plan(client: &Client, a: PlanArgs) -> anyhow::Result<ExitCode> {
    match &a.policy {
        Some(file) => policy(client, &a, file).await,
        None => ahead(client, &a).await,
    }
}

async fn ahead(client: &Client, a: &PlanArgs) -> anyhow::Result<ExitCode> {
    let mut path = format!("/v1/admin/plan?within={}", urlencode(&a.within));
    if let Some(n) = a.limit {
        path += &format!("&limit={n}");
    }
    let plan: Plan = client.fetch(Method::GET, &path).await?;
    if a.json {
        print_json(&plan);
    } else {
        print_plan(&plan);
    }
    Ok(ExitCode::SUCCESS)
}

/// One day's events by owner (the maintenance runs last), each with its time of day.
type ByOwner<'a> = BTreeMap<(bool, String), Vec<(String, &'a Event)>>;

fn print_plan(p: &Plan) {
    println!(
        "From {} to {} ({}): {} event(s)",
        secs(&p.now),
        secs(&p.until),
        p.within,
        p.total
    );
    // Day, then owner (the maintenance runs last), then time.
    let mut days: BTreeMap<String, ByOwner<'_>> = BTreeMap::new();
    for e in &p.events {
        let owner = e.owner.clone().unwrap_or_else(|| "maintenance".to_owned());
        let (day, time) = day_and_time(&e.at);
        days.entry(day)
            .or_default()
            .entry((e.owner.is_none(), owner))
            .or_default()
            .push((time, e));
    }
    for (day, owners) in days {
        println!();
        println!("{day}");
        for ((_, owner), events) in owners {
            println!("  {owner}");
            for (time, e) in events {
                println!("    {time}  {}", event_line(e));
            }
        }
    }
    print_cut(p.events.len(), p.total, "events");
    if !p.maintenance.is_empty() {
        println!();
        println!("Maintenance jobs:");
        for m in &p.maintenance {
            println!(
                "  {:<20} {:<18} next {}",
                wire(&m.task),
                m.schedule,
                m.next_run.as_ref().map_or_else(|| "never".to_owned(), secs)
            );
        }
    }
}

/// Say so when the limit cut the list.
fn print_cut(shown: usize, total: usize, what: &str) {
    if shown < total {
        println!();
        println!("(the first {shown} of {total} {what}; --limit lists more)");
    }
}

/// A time to the second, as the text lines show it (local with `--local` or `TZ`).
fn secs(t: &DateTime<Utc>) -> String {
    show_time(&t.trunc_subsecs(0), Precision::Full)
}

/// One event: the key (name and id) and what happens to it, or the run's job.
fn event_line(e: &Event) -> String {
    let key = match (&e.key_name, &e.key_id) {
        (Some(name), Some(id)) => format!("{name} ({id}): "),
        _ => String::new(),
    };
    let via = match (&e.source, e.kind) {
        (
            Some(s),
            EventKind::Notification | EventKind::InactivityWarning | EventKind::RotationWarning,
        ) => {
            format!(" via {s}")
        }
        _ => String::new(),
    };
    format!("{key}{}{via}", e.detail)
}

async fn policy(client: &Client, a: &PlanArgs, file: &PathBuf) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let body = json!({
        "config": text,
        "file": file.display().to_string(),
        "within": a.within,
        "limit": a.limit,
    });
    let plan: PolicyPlan = client
        .send(Method::POST, "/v1/admin/plan/policy", &body)
        .await?;
    if a.json {
        print_json(&plan);
    } else {
        print_policy(&plan, file);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_policy(p: &PolicyPlan, file: &std::path::Path) {
    let c = &p.counts;
    println!(
        "{} compared with the configuration in force (nothing applied): {} key(s) change",
        file.display(),
        p.total
    );
    println!(
        "  expiry moves: {} ({} expired or inactive at once); beyond the new maximum: {}; lose scopes: {}; lose their owner: {}; gain scopes: {}; work again: {}; notifications move: {}",
        c.expiry_moves,
        c.expire_at_once,
        c.beyond_max,
        c.lose_scopes,
        c.lose_owner,
        c.gain_scopes,
        c.regain_owner,
        c.notifications
    );
    let mut owner = None;
    for k in &p.keys {
        if owner != Some(&k.owner) {
            println!();
            println!("{}", k.owner);
            owner = Some(&k.owner);
        }
        println!("  {} ({})", k.name, k.key_id);
        for line in change_lines(k) {
            println!("    {line}");
        }
    }
    print_cut(p.keys.len(), p.total, "keys");
    if !p.notes.is_empty() {
        println!();
        println!("Notes:");
        for n in &p.notes {
            println!("  {n}");
        }
    }
}

/// What changes for one key, a line each.
fn change_lines(k: &KeyChange) -> Vec<String> {
    let when = |t: &Option<DateTime<Utc>>, limit: &Option<String>| match (t, limit) {
        (Some(t), Some(l)) => format!("{} ({l})", secs(t)),
        (Some(t), None) => secs(t),
        (None, _) => "never".to_owned(),
    };
    let mut out = Vec::new();
    if let Some(e) = &k.expiry {
        let mut line = format!(
            "expiry {} -> {}",
            when(&e.from, &e.from_limit),
            when(&e.to, &e.to_limit)
        );
        if e.at_once {
            line += ": EXPIRED OR INACTIVE AT ONCE";
        }
        out.push(line);
    }
    if k.beyond_max {
        out.push("expires later than the new MaxExpirationPeriod allows; keeps its expiry".into());
    }
    if k.owner_lost {
        out.push(format!(
            "owner {:?} no longer configured: the key is refused",
            k.owner
        ));
    }
    if !k.lost_scopes.is_empty() {
        let mut line = format!("loses scopes {}", k.lost_scopes.join(", "));
        if k.refused {
            line += ": none left, the key is refused";
        }
        out.push(line);
    }
    if k.owner_regained && k.refused {
        out.push(format!(
            "owner {:?} configured again, but its groups grant none of the key's scopes: still refused",
            k.owner
        ));
    } else if k.owner_regained {
        out.push(format!(
            "owner {:?} configured again: THE KEY IS NO LONGER REFUSED (if enabled and not expired), with scopes {}",
            k.owner,
            k.gained_scopes.join(", ")
        ));
    } else if !k.gained_scopes.is_empty() {
        out.push(format!(
            "GAINS scopes {}: its owner's groups grant them again",
            k.gained_scopes.join(", ")
        ));
    }
    for n in &k.notifications {
        let at = |t: &Option<DateTime<Utc>>| t.as_ref().map_or_else(|| "none".to_owned(), secs);
        out.push(format!(
            "{}: {} -> {}, {}",
            wire(&n.kind).replace('_', " "),
            at(&n.from),
            at(&n.to),
            n.detail
        ));
    }
    out
}
