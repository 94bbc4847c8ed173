//! Failed verifications are rate limited per client, and charged to the caller (the
//! TCP peer, the client a trusted proxy names, or the local account on the admin
//! socket), never to an address the caller names.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::util::{bearer, exchange, request, request_from, Answer, TestDaemon, DEFAULT_POLICY};

#[test]
fn failed_verifications_are_rate_limited_per_client() {
    let d = TestDaemon::start_with(
        DEFAULT_POLICY,
        "[auth]\ntrusted_proxies = [\"127.0.0.1/32\"]\n[rate_limit]\nfailures_per_minute = 1\nburst = 3\n",
    );
    let (_, key) = d.create("alice", "k", &[]);
    let good = bearer(&key);
    let unknown = bearer(&key.replace(&key[4..10], "ZZZZZZ"));
    let from = |ip: &'static str, auth: &str| {
        request(
            d.addr,
            "GET",
            "/v1/auth",
            &[("Authorization", auth), ("X-Forwarded-For", ip)],
        )
    };
    for _ in 0..3 {
        assert_eq!(from("192.0.2.1", &unknown).status, 401);
    }
    let a = from("192.0.2.1", &unknown);
    assert_eq!(
        (a.status, a.header("x-api-key-reason")),
        (429, Some("RATE_LIMITED"))
    );
    let retry: u64 = a.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(
        from("192.0.2.1", &good).status,
        429,
        "the client is blocked, whatever key it tries"
    );
    assert_eq!(
        from("192.0.2.2", &good).status,
        200,
        "other clients are not affected"
    );
    // /v1/verify counts failures against the end client it names.
    for _ in 0..3 {
        let (s, _) = d.post("/v1/verify", r#"{"key":"akd_x","ip":"192.0.2.7"}"#);
        assert_eq!(s, 200);
    }
    let (s, body) = d.post("/v1/verify", r#"{"key":"akd_x","ip":"192.0.2.7"}"#);
    assert_eq!(s, 429, "{body}");
    let metrics = request(d.addr, "GET", "/metrics", &[]).body;
    assert!(
        metrics.contains("apikeyd_rate_limited_total 3"),
        "{metrics}"
    );
}

/// Regression (issue 9, item 3): `/v1/verify` charged failures to the `ip` named in
/// its body, in the bucket `/v1/auth` shares, whoever sent it. Three failed calls
/// naming 203.0.113.7 made `/v1/auth` answer 429 to that client's valid key, and
/// naming a new address each time let the caller fail without limit. Failures are
/// now charged to the caller: the TCP peer, or the client a trusted proxy names.
#[test]
fn failures_naming_a_victim_are_charged_to_the_caller_not_the_victim() {
    // 127.0.0.2 is the trusted proxy in front of the victim; the flooder at
    // 127.0.0.1 is a plain client.
    let d = TestDaemon::start_with(
        DEFAULT_POLICY,
        "[auth]\ntrusted_proxies = [\"127.0.0.2/32\"]\n[rate_limit]\nfailures_per_minute = 1\nburst = 3\n",
    );
    let (_, key) = d.create("alice", "victim", &[]);
    let (_, flooder_key) = d.create("bob", "flooder", &[]);
    let victim = "203.0.113.7";
    let verify_body = |k: &str, ip: &str| format!(r#"{{"key":"{k}","ip":"{ip}"}}"#);
    let via_proxy_auth = || {
        let (status, _) = request_from(
            "127.0.0.2",
            &d,
            &format!(
                "GET /v1/auth HTTP/1.1\r\nAuthorization: Bearer {key}\r\nX-Forwarded-For: {victim}"
            ),
            "",
        );
        status
    };
    let via_proxy_verify = || {
        request_from(
            "127.0.0.2",
            &d,
            "POST /v1/verify HTTP/1.1\r\nContent-Type: application/json",
            &verify_body(&key, victim),
        )
    };

    // The flood: failures that name the victim, then a new address each time.
    for i in 0..3 {
        let (s, body) = d.post("/v1/verify", &verify_body("akd_x", victim));
        assert_eq!(s, 200, "failure {i} answered: {body}");
    }
    for i in 0..5 {
        let (s, body) = d.post(
            "/v1/verify",
            &verify_body("akd_x", &format!("198.51.100.{i}")),
        );
        assert_eq!(
            s, 429,
            "rotating the body ip does not dodge the limit: {body}"
        );
        assert!(
            body.to_string().contains("127.0.0.1"),
            "the flooder is named: {body}"
        );
    }
    // The flooder is limited everywhere, whatever key it shows next.
    let a = request(
        d.addr,
        "GET",
        "/v1/auth",
        &[("Authorization", &bearer(&flooder_key))],
    );
    assert_eq!(a.status, 429, "the flooder itself is limited");

    // The victim keeps passing, on both endpoints.
    assert_eq!(
        via_proxy_auth(),
        200,
        "the victim is not locked out of /v1/auth"
    );
    let (s, body) = via_proxy_verify();
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("\"code\":\"VALID\""), "{body}");

    // A trusted proxy's body ip is believed: its failures are charged to the client
    // it names, and that client's neighbours are not affected.
    let proxy_verify = |k: &str, ip: &str| {
        request_from(
            "127.0.0.2",
            &d,
            "POST /v1/verify HTTP/1.1\r\nContent-Type: application/json",
            &verify_body(k, ip),
        )
        .0
    };
    for _ in 0..3 {
        assert_eq!(proxy_verify("akd_x", "192.0.2.50"), 200);
    }
    assert_eq!(proxy_verify(&key, "192.0.2.50"), 429);
    assert_eq!(proxy_verify(&key, "192.0.2.51"), 200);
    assert_eq!(via_proxy_auth(), 200, "the victim still passes");
}

/// Regression (issue 9, item 3), on the admin socket: there is no TCP peer, so the
/// `ip` a local caller named was charged, and a local account could lock that
/// client out of `/v1/auth` and `/v1/verify` or fail without limit by naming a new
/// address each time. The socket's caller is now its local account (uid).
#[test]
fn failures_on_the_admin_socket_are_charged_to_the_local_account() {
    let d = TestDaemon::start_with(
        DEFAULT_POLICY,
        "[auth]\ntrusted_proxies = [\"127.0.0.1/32\"]\n[rate_limit]\nfailures_per_minute = 1\nburst = 3\n",
    );
    let (_, key) = d.create("alice", "victim", &[]);
    let victim = "203.0.113.7";
    for _ in 0..3 {
        let out = d.ctl(&["verify", "akd_x", "--ip", victim]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("MALFORMED"), "{text}");
    }
    for i in 0..3 {
        let ip = format!("198.51.100.{i}");
        let err = d.fails(&["verify", "akd_x", "--ip", &ip]);
        assert!(
            err.contains("local uid"),
            "a new ip does not dodge the limit: {err}"
        );
    }
    // The address named is neither charged nor limited.
    let (s, body) = d.post(
        "/v1/verify",
        &format!(r#"{{"key":"{key}","ip":"{victim}"}}"#),
    );
    assert_eq!((s, body["code"].as_str()), (200, Some("VALID")), "{body}");
    let a = request(
        d.addr,
        "GET",
        "/v1/auth",
        &[
            ("Authorization", &bearer(&key)),
            ("X-Forwarded-For", victim),
        ],
    );
    assert_eq!(a.status, 200);
}

/// A raw request over the admin socket (`Connection: close` added); status and body.
fn unix_raw(socket: &std::path::Path, head: &str, body: &str) -> (u16, String) {
    let s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let req = format!(
        "{head}Host: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let a = Answer::parse(&exchange(s, req.as_bytes()));
    (a.status, a.body)
}

/// Regression (issue 9 review, F4): `/v1/auth` was served on the 0666 admin
/// socket, where the missing TCP peer was taken for 127.0.0.1, a trusted proxy:
/// any local account (even an unmapped one) could charge failures to any address
/// it named in X-Forwarded-For, which then got 429 through the real proxy, and
/// probe keys' IP filters. Forward-auth is TCP only now, and failures over the
/// socket are charged to the local account whatever address they name.
#[test]
fn local_accounts_cannot_charge_failures_to_a_tcp_client() {
    if !crate::util::require_root("runs apikeyctl as nobody") {
        return;
    }
    let d = TestDaemon::start_with(
        DEFAULT_POLICY,
        "[auth]\ntrusted_proxies = [\"127.0.0.1/32\"]\n[rate_limit]\nfailures_per_minute = 1\nburst = 3\n",
    );
    let (_, key) = d.create("alice", "victim", &[]);
    let victim = "203.0.113.7";
    for path in ["/v1/auth", "/v1/auth/catalog/items"] {
        for _ in 0..5 {
            let (status, body) = unix_raw(
                &d.socket,
                &format!(
                    "GET {path} HTTP/1.1\r\nX-Forwarded-For: {victim}\r\nX-Api-Key: akd_bogus\r\n"
                ),
                "",
            );
            assert_eq!(status, 404, "{path} on the socket: {body}");
        }
    }
    // /v1/verify over the socket, from an unmapped account, naming the victim in
    // the body and in X-Forwarded-For.
    for _ in 0..5 {
        let out = d.ctl_as(Some(65534), &["verify", "akd_x", "--ip", victim]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            text.contains("MALFORMED") || text.contains("local uid"),
            "{text}"
        );
        let (status, body) = unix_raw(
            &d.socket,
            &format!("POST /v1/verify HTTP/1.1\r\nX-Forwarded-For: {victim}\r\nContent-Type: application/json\r\n"),
            &format!(r#"{{"key":"akd_x","ip":"{victim}"}}"#),
        );
        assert!(matches!(status, 200 | 429), "{status} {body}");
    }
    let a = request(
        d.addr,
        "GET",
        "/v1/auth",
        &[
            ("Authorization", &bearer(&key)),
            ("X-Forwarded-For", victim),
        ],
    );
    assert_eq!(
        (a.status, a.header("x-api-key-reason")),
        (200, None),
        "the victim is not limited"
    );
}
