//! The console in Firefox (issue 12: it works in current Chromium and Firefox):
//! a key's life through the page in Debian's Firefox ESR, driven by geckodriver,
//! checked outside the browser as keys.rs checks it in Chromium.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::keys::{auth, open_key, verify};
use super::Browser;
use crate::console::daemon;

#[test]
fn in_firefox_a_key_is_created_downloaded_and_disabled_in_the_page() {
    let Some(b) = Browser::firefox() else {
        return;
    };
    let (d, _) = daemon("");
    assert!(b.login(&d, None).starts_with("admin"));

    // A refused field first: the daemon's message next to it, nothing made.
    b.click("#create-button");
    b.wait_for("#create-dialog[open]");
    b.fill("#create-name", "firefox-deploy");
    b.fill("#create-ip", "10.0.0.300");
    b.click("#create-submit");
    let shown = b.wait_text("#create-ip-error", "not an IP address");
    assert!(shown.contains("10.0.0.300"), "{shown}");
    assert!(d.keys().is_empty(), "a refused create made a key");

    // No filter: `apikeyctl verify` asks over the admin socket, from no address.
    b.fill("#create-ip", "");
    b.click("#create-submit");
    b.wait_for("#secret-dialog[open]");
    let secret = b.value("#secret-value");
    assert!(secret.starts_with("akd_"), "{secret:?}");
    let verified = verify(&d, &secret);
    assert!(verified.contains("VALID"), "{verified}");
    b.click("#secret-download");
    let file = b.wait_download("firefox-deploy.APIKEY");
    assert_eq!(String::from_utf8(file).unwrap().trim(), secret);
    b.click("#secret-close");
    b.wait_gone("#secret-dialog[open]");
    assert_eq!(auth(&d, &secret), 200);

    let keys = d.keys();
    let id = keys
        .iter()
        .find(|k| k["name"] == "firefox-deploy")
        .and_then(|k| k["id"].as_str())
        .unwrap_or_else(|| panic!("no firefox-deploy in {keys:?}"));
    open_key(&b, id);
    b.click("#key-disable");
    b.wait_text("#key-status", "disabled");
    assert_eq!(auth(&d, &secret), 403, "a disabled key is refused at once");
}
