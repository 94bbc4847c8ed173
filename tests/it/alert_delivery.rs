//! What alert delivery guarantees: jobs due while the daemon was stopped are delivered
//! at start, kill -9 during a burst loses no alert and leaves only final states, and
//! a burst of simultaneous alerts loses nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::time::Duration;

use crate::alerts::{at, job, jobs_of, key, messages, start, wait_job};
use crate::smtp::Smtp;
use crate::util::{free_port, wait_until};

#[test]
fn jobs_due_while_stopped_are_delivered_at_start() {
    let mut d = start(free_port(), "", "");
    let (id, _) = d.create(
        "alice",
        "k",
        &["--notify-at", &at(3600), "--alert-source", "operator"],
    );
    let j = key(&d, &id)["alert_job"].as_str().unwrap().to_owned();
    d.stop();
    d.spawn(&[("APIKEYD_CLOCK_OFFSET_SECS", "7200")]);
    wait_job(&d, &j, "Completed", 10);
    let msgs = messages(&d, false);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["key_id"], id.as_str());
    assert!(
        msgs[0]["title"].as_str().unwrap().contains("\"k\""),
        "{}",
        msgs[0]
    );
    let log = d.log_text();
    assert!(log.contains("operator message"));
    // Quiet by default: the maintenance scheduler's own lines stay out.
    assert!(log.contains("apikeyd ready"), "{log}");
    assert!(!log.contains("Job creator created"), "{log}");
}

#[test]
fn kill_9_during_a_burst_delivers_every_alert_and_leaves_only_final_states() {
    // A slow SMTP server (100 ms a message) so the kill lands mid-burst.
    let smtp = Smtp::on(
        TcpListener::bind("127.0.0.1:0").unwrap(),
        Duration::from_millis(100),
    );
    let mut d = start(smtp.port, "", "");
    let due = at(4);
    let ids: Vec<String> = (0..24)
        .map(|i| {
            d.create("alice", &format!("burst-{i}"), &["--notify-at", &due])
                .0
        })
        .collect();
    wait_until(Duration::from_secs(20), || !smtp.mails().is_empty());
    d.kill9();
    let at_kill = smtp.mails().len();
    assert!(
        at_kill < ids.len(),
        "the burst was over before the kill ({at_kill})"
    );
    d.spawn(&[]);
    wait_until(Duration::from_secs(30), || {
        d.json(&["job", "list"])["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["state"] != "Scheduled" && j["state"] != "Running")
    });
    // Every key got its email at least once; duplicates carry the same Message-ID.
    let mails = smtp.mails();
    for id in &ids {
        assert!(
            mails.iter().any(|m| m.data.contains(id.as_str())),
            "no email for key {id}"
        );
    }
    for id in &ids {
        let mut ids_seen: Vec<String> = mails
            .iter()
            .filter(|m| m.data.contains(id.as_str()))
            .map(|m| m.header("Message-ID").unwrap())
            .collect();
        ids_seen.dedup();
        assert_eq!(ids_seen.len(), 1, "one Message-ID per key: {ids_seen:?}");
    }
    // Every job is final, by the rules: Completed, or Canceled and replaced by a
    // job that the key tracks and that Completed.
    let mut replaced = 0;
    for id in &ids {
        let k = key(&d, id);
        let tracked = k["alert_job"].as_str().unwrap().to_owned();
        assert_eq!(job(&d, &tracked)["state"], "Completed", "key {id}");
        for j in jobs_of(&d, id) {
            match j["state"].as_str().unwrap() {
                "Completed" => {}
                "Canceled" => {
                    replaced += 1;
                    assert!(
                        j["last_error"].as_str().unwrap().contains("interrupted"),
                        "{j}"
                    );
                    assert_eq!(j["replaced_by"], tracked.as_str(), "{j}");
                }
                other => panic!("job in state {other}: {j}"),
            }
        }
    }
    assert!(
        d.log_text().contains("replaced"),
        "restart reported replacements"
    );
    eprintln!(
        "kill -9: {at_kill} mails before the kill, {} after, {replaced} jobs replaced",
        mails.len()
    );
}

#[test]
fn a_burst_of_simultaneous_alerts_loses_nothing() {
    let d = start(free_port(), "concurrency = 8", "");
    let due = at(4);
    let ids: Vec<String> = (0..60)
        .map(|i| {
            d.create(
                "alice",
                &format!("b{i}"),
                &["--notify-at", &due, "--alert-source", "operator"],
            )
            .0
        })
        .collect();
    wait_until(Duration::from_secs(30), || {
        messages(&d, false).len() >= ids.len()
    });
    std::thread::sleep(Duration::from_millis(300));
    let msgs = messages(&d, false);
    assert_eq!(msgs.len(), ids.len(), "each alert exactly once");
    let completed = d.json(&["job", "list", "--state", "Completed"])["jobs"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(completed, ids.len());
}
