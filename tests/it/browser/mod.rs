//! The web console in a real browser: Debian's Chromium, headless, driven over
//! WebDriver by Debian's chromedriver (fantoccini), or Debian's Firefox ESR by
//! geckodriver (`Browser::firefox`). `Browser` starts both on a fresh profile,
//! bounds every command and every wait by a few seconds, and kills both on drop,
//! a panic included; its helpers log in through a real console link and find,
//! click, fill, wait, read, download and take screenshots, the same in either
//! browser. The tests of the page are in the submodules (Firefox's in firefox.rs);
//! the harness's own checks are here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod firefox;
mod keys;
mod session;

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::console::link;
use crate::util::{find_program, require, TestDaemon};

/// The longest a wait for the page (an element, a text, a download) may take. The
/// page answers in milliseconds; the margin is for a machine busy with the rest of
/// the suite (2 cores).
pub const WAIT: Duration = Duration::from_secs(10);
/// The longest one WebDriver command may take, a page load included.
const COMMAND: Duration = Duration::from_secs(15);
/// The longest the driver may take to start, and the browser to open a session.
const START: Duration = Duration::from_secs(30);
/// The window: wide enough for the key table's columns in a screenshot.
const WINDOW: (u32, u32) = (1280, 900);
/// Where the page keeps its session's CSRF token (console.js).
pub const CSRF_STORAGE_KEY: &str = "apikeyd.csrf";

/// Chromium's flags on these machines (as root, no network of its own).
pub const CHROMIUM_FLAGS: [&str; 7] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// Which browser a `Browser` runs; the helpers are the same for both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Debian's Chromium through Debian's chromedriver.
    Chromium,
    /// Debian's Firefox ESR through geckodriver (from crates.io: Debian has no
    /// package of it).
    Firefox,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Chromium => "Chromium",
            Kind::Firefox => "Firefox",
        }
    }

    fn driver_name(self) -> &'static str {
        match self {
            Kind::Chromium => "chromedriver",
            Kind::Firefox => "geckodriver",
        }
    }

    /// The browser and its driver on this machine, or what to install.
    fn programs(self) -> Result<(PathBuf, PathBuf), &'static str> {
        let found = match self {
            Kind::Chromium => (
                find_program("chromium", &["/usr/bin", "/usr/local/bin"]),
                find_program("chromedriver", &["/usr/bin", "/usr/lib/chromium"]),
            ),
            Kind::Firefox => (
                find_program("firefox-esr", &["/usr/bin", "/usr/local/bin"]),
                find_program("geckodriver", &[&cargo_bin()]),
            ),
        };
        match found {
            (Some(browser), Some(driver)) => Ok((browser, driver)),
            _ => Err(match self {
                Kind::Chromium => {
                    "Debian's chromium and chromedriver (apt-get install chromium chromium-driver)"
                }
                Kind::Firefox => {
                    "Debian's firefox-esr and geckodriver (apt-get install firefox-esr; \
                     cargo install --locked geckodriver)"
                }
            }),
        }
    }
}

/// One headless browser behind its own WebDriver server, on a fresh profile.
pub struct Browser {
    rt: tokio::runtime::Runtime,
    /// None only while starting, or when the start failed.
    client: Option<Client>,
    /// The driver, leader of a process group that the browser's processes join.
    driver: Child,
    /// The profile, the downloads, and for Firefox its home and temp dir.
    dir: tempfile::TempDir,
    /// Where screenshots go: `APIKEYD_SCREENSHOTS`, else `dir`.
    shots: PathBuf,
}

impl Browser {
    /// A Chromium in the machine's time zone; `None` when Chromium or
    /// chromedriver is missing and skipping was allowed (`util::require`: never
    /// under CI).
    pub fn start() -> Option<Self> {
        Self::start_with(Kind::Chromium, None)
    }

    /// A Chromium whose time zone is `tz` (an IANA name, through `TZ`).
    pub fn start_in(tz: &str) -> Option<Self> {
        Self::start_with(Kind::Chromium, Some(tz))
    }

    /// A Firefox in the machine's time zone; `None` as for `start`.
    pub fn firefox() -> Option<Self> {
        Self::start_with(Kind::Firefox, None)
    }

    fn start_with(kind: Kind, tz: Option<&str>) -> Option<Self> {
        let (browser, driver) = match kind.programs() {
            Ok(p) => p,
            Err(what) => {
                require(what, false);
                return None;
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let downloads = dir.path().join("downloads");
        let profile = dir.path().join("profile");
        for d in [&downloads, &profile] {
            std::fs::create_dir(d).unwrap();
        }
        let shots = match std::env::var_os("APIKEYD_SCREENSHOTS") {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => dir.path().to_path_buf(),
        };
        std::fs::create_dir_all(&shots).unwrap();

        // Port 0: the driver takes a free port and says which. The browser
        // inherits the driver's environment.
        let mut cmd = Command::new(driver);
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        match kind {
            Kind::Chromium => {
                cmd.arg("--port=0");
            }
            Kind::Firefox => {
                // Firefox writes under HOME (~/.cache/mozilla, ~/.config/
                // mozilla, dconf) and TMPDIR besides its profile, as root too
                // (where it runs as it is): here that goes with the rest on
                // drop, which a kill would not give Firefox the time to do.
                // The marionette port is the system's pick by default.
                let home = dir.path().join("home");
                let tmp = dir.path().join("tmp");
                for d in [&home, &tmp] {
                    std::fs::create_dir(d).unwrap();
                }
                cmd.args(["--port", "0"])
                    .env("HOME", home)
                    .env("TMPDIR", tmp)
                    .env("MOZ_CRASHREPORTER_DISABLE", "1")
                    // Firefox then refuses connections off this machine, and
                    // honours the remote settings server pref, which a
                    // release build ignores otherwise (it looked up
                    // firefox.settings.services.mozilla.com without).
                    .env("MOZ_DISABLE_NONLOCAL_CONNECTIONS", "1");
            }
        }
        if let Some(tz) = tz {
            cmd.env("TZ", tz);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // From here on, Drop kills the driver and the browser whatever happens.
        let mut b = Self {
            rt,
            client: None,
            driver: child,
            dir,
            shots,
        };
        let port = driver_port(kind, stdout);
        let caps = match kind {
            Kind::Chromium => chromium_options(&browser, &profile, &downloads),
            Kind::Firefox => firefox_options(&browser, &profile, &downloads),
        };
        let mut caps = caps.as_object().unwrap().clone();
        caps.insert(
            "timeouts".into(),
            json!({
                "implicit": 0,
                "pageLoad": COMMAND.as_millis() as u64,
                "script": WAIT.as_millis() as u64,
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let connect = async {
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps)
                .connect(&url)
                .await
        };
        let client = match b
            .rt
            .block_on(async { tokio::time::timeout(START, connect).await })
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => panic!(
                "{} could not start {}: {e}",
                kind.driver_name(),
                kind.name()
            ),
            Err(_) => panic!("{} did not start within {START:?}", kind.name()),
        };
        b.client = Some(client);
        Some(b)
    }

    /// The WebDriver client, for what the helpers do not cover.
    pub fn client(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    /// `f` (WebDriver commands) within `COMMAND`; panics naming `what` on an error.
    #[track_caller]
    pub fn run<T, E: std::fmt::Display>(
        &self,
        what: &str,
        f: impl Future<Output = Result<T, E>>,
    ) -> T {
        match self.try_run(f) {
            Ok(v) => v,
            Err(e) => panic!("{what}: {e}"),
        }
    }

    /// `f` within `COMMAND`: its error, or a timeout, as text.
    fn try_run<T, E: std::fmt::Display>(
        &self,
        f: impl Future<Output = Result<T, E>>,
    ) -> Result<T, String> {
        match self
            .rt
            .block_on(async { tokio::time::timeout(COMMAND, f).await })
        {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer from the browser within {COMMAND:?}")),
        }
    }

    /// `f` again and again until it gives a value, for at most `WAIT`; then panics
    /// naming `what` and the page's text.
    #[track_caller]
    pub fn poll<T>(&self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(v) = f() {
                return v;
            }
            if Instant::now() > deadline {
                let page = self
                    .try_run(
                        self.client()
                            .execute("return document.body.innerText", vec![]),
                    )
                    .map(|v| v.as_str().unwrap_or_default().to_owned())
                    .unwrap_or_else(|e| format!("(unreadable: {e})"));
                panic!(
                    "{what}: not within {WAIT:?}; the page at {} says:\n{page}",
                    self.url()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Load `url` as a new page, even when it differs from the shown one only in
    /// its fragment (as a console link and the console do), which would not load
    /// the page again.
    #[track_caller]
    pub fn open(&self, url: &str) {
        self.run("open about:blank", self.client().goto("about:blank"));
        self.run(&format!("open {url}"), self.client().goto(url));
    }

    #[track_caller]
    pub fn reload(&self) {
        self.run("reload", self.client().refresh());
    }

    /// The address shown.
    pub fn url(&self) -> String {
        self.try_run(self.client().current_url())
            .map_or_else(|e| format!("(unknown: {e})"), |u| u.to_string())
    }

    /// Open a console link `url` and press "Log in"; what follows is the page's.
    #[track_caller]
    pub fn use_link(&self, url: &str) {
        self.open(url);
        self.click("#login-button");
    }

    /// Log in as the user `apikeyctl console-link` run as `uid` (None: root)
    /// is, and wait for the key list; the name the page shows.
    #[track_caller]
    pub fn login(&self, d: &TestDaemon, uid: Option<u32>) -> String {
        self.login_with(&link(d, uid))
    }

    /// Log in with the console link `url` and wait for the key list; the name
    /// the page shows.
    #[track_caller]
    pub fn login_with(&self, url: &str) -> String {
        self.use_link(url);
        self.wait_for("#keys");
        // The list is loaded when the status line is empty again.
        self.wait_gone("#status");
        self.text("#who")
    }

    /// The first element `css` matches, now.
    #[track_caller]
    pub fn find(&self, css: &str) -> Element {
        self.run(
            &format!("find {css}"),
            self.client().find(Locator::Css(css)),
        )
    }

    /// The visible text of the shown elements `css` matches (none: hidden or
    /// absent), read in one step so that a list being redrawn reads whole.
    #[track_caller]
    pub fn texts(&self, css: &str) -> Vec<String> {
        self.try_texts(css)
            .unwrap_or_else(|e| panic!("read {css}: {e}"))
    }

    fn try_texts(&self, css: &str) -> Result<Vec<String>, String> {
        let script = "return [...document.querySelectorAll(arguments[0])]
            .filter((e) => e.checkVisibility())
            .map((e) => e.innerText);";
        let v = self.try_run(self.client().execute(script, vec![json!(css)]))?;
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    /// The visible text of the one shown element `css` matches.
    #[track_caller]
    pub fn text(&self, css: &str) -> String {
        let mut t = self.texts(css);
        assert_eq!(t.len(), 1, "{css} should match one shown element: {t:?}");
        t.remove(0)
    }

    /// An input's current value.
    #[track_caller]
    pub fn value(&self, css: &str) -> String {
        let v = self.run(&format!("value of {css}"), self.find(css).prop("value"));
        v.unwrap_or_default()
    }

    /// Wait until an element `css` matches is shown; that element.
    #[track_caller]
    pub fn wait_for(&self, css: &str) -> Element {
        self.poll(&format!("{css} shown"), || {
            self.try_texts(css).ok().filter(|t| !t.is_empty())
        });
        self.find(css)
    }

    /// Wait until a shown element `css` matches has `text` in its text; that
    /// element's whole text.
    #[track_caller]
    pub fn wait_text(&self, css: &str, text: &str) -> String {
        self.poll(&format!("{css} showing {text:?}"), || {
            self.try_texts(css)
                .ok()?
                .into_iter()
                .find(|t| t.contains(text))
        })
    }

    /// Wait until no element `css` matches is shown (hidden or gone).
    #[track_caller]
    pub fn wait_gone(&self, css: &str) {
        self.poll(&format!("{css} gone"), || {
            self.try_texts(css).ok().filter(|t| t.is_empty())
        });
    }

    /// Click the element `css` matches, once it is shown and can take the
    /// click (WebDriver's click: scrolled into view, refused when covered).
    #[track_caller]
    pub fn click(&self, css: &str) {
        self.wait_for(css);
        self.poll(&format!("click {css}"), || {
            let e = self.try_run(self.client().find(Locator::Css(css))).ok()?;
            self.try_run(e.click()).ok()
        });
    }

    /// Type `text` into the input `css` matches, replacing what it held.
    #[track_caller]
    pub fn fill(&self, css: &str, text: &str) {
        let e = self.wait_for(css);
        self.run(&format!("clear {css}"), e.clear());
        self.run(&format!("type into {css}"), e.send_keys(text));
    }

    /// Run `script` in the page (not subject to the page's CSP); its result.
    #[track_caller]
    pub fn exec(&self, script: &str, args: Vec<Value>) -> Value {
        self.run("execute script", self.client().execute(script, args))
    }

    /// Run `script`, which ends by calling its last argument with the result.
    #[track_caller]
    pub fn exec_async(&self, script: &str, args: Vec<Value>) -> Value {
        self.run(
            "execute async script",
            self.client().execute_async(script, args),
        )
    }

    /// `fetch(path)` from the page, with its cookies, and with the session's CSRF
    /// token when `with_csrf`: the status and the body (JSON, or a JSON string).
    #[track_caller]
    pub fn fetch(&self, method: &str, path: &str, with_csrf: bool) -> (u16, Value) {
        let script = "const [method, path, key, done] = arguments;
            const headers = { Accept: 'application/json' };
            const token = key && sessionStorage.getItem(key);
            if (token) headers['X-CSRF-Token'] = token;
            fetch(path, { method, headers, credentials: 'same-origin' })
              .then(async (r) => done([r.status, await r.text()]))
              .catch((e) => done([0, String(e)]));";
        let key = if with_csrf {
            json!(CSRF_STORAGE_KEY)
        } else {
            json!(null)
        };
        let v = self.exec_async(script, vec![json!(method), json!(path), key]);
        let status = v[0].as_u64().unwrap() as u16;
        let text = v[1].as_str().unwrap();
        let body = serde_json::from_str(text).unwrap_or_else(|_| json!(text));
        (status, body)
    }

    /// The names in the key table's rows, in the order shown.
    #[track_caller]
    pub fn key_names(&self) -> Vec<String> {
        self.texts("#key-rows tr[data-id] > th")
    }

    /// Where downloads land.
    pub fn downloads(&self) -> PathBuf {
        self.dir.path().join("downloads")
    }

    /// Wait until the download `name` is complete; its bytes.
    #[track_caller]
    pub fn wait_download(&self, name: &str) -> Vec<u8> {
        let file = self.downloads().join(name);
        let part = self.downloads().join(format!("{name}.part"));
        // Chromium writes to NAME.crdownload (or a temp name) and renames it
        // when done, so a file under its own name is whole. Firefox first puts
        // an empty NAME in place, writes NAME.part and renames it over NAME: no
        // .part and some bytes is whole (no download here is empty).
        self.poll(&format!("download {name}"), || {
            std::fs::read(&file)
                .ok()
                .filter(|b| !b.is_empty() && !part.exists())
        })
    }

    /// A screenshot of the window as `NAME.png` in the screenshot directory
    /// (`APIKEYD_SCREENSHOTS`, else the browser's temp dir); its path.
    #[track_caller]
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.run("screenshot", self.client().screenshot());
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Resize the window (a smaller screenshot, a phone).
    #[track_caller]
    pub fn resize(&self, width: u32, height: u32) {
        self.run(
            "resize the window",
            self.client().set_window_size(width, height),
        );
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            // A polite end first (the browser closes its profile); bounded, as a
            // browser that hangs must not hang the test.
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(3), c.close()).await });
        }
        // Then the driver's whole process group: the browser and its helpers.
        let _ = rustix::process::kill_process_group(
            rustix::process::Pid::from_child(&self.driver),
            rustix::process::Signal::KILL,
        );
        let _ = self.driver.wait();
    }
}

/// Where `cargo install` puts programs (geckodriver), for when it is not on PATH.
fn cargo_bin() -> String {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default();
    home.join("bin").display().to_string()
}

/// Chromium's capabilities: headless on `profile`, downloads into `downloads`.
fn chromium_options(chromium: &Path, profile: &Path, downloads: &Path) -> Value {
    let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| f.to_string()).collect();
    args.extend([
        format!("--user-data-dir={}", profile.display()),
        format!("--window-size={},{}", WINDOW.0, WINDOW.1),
        // Dates and times as en-US writes them, whatever the machine's locale.
        "--lang=en-US".into(),
    ]);
    json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium,
            "args": args,
            // Downloads land in `downloads` without asking.
            "prefs": {
                "download.default_directory": downloads,
                "download.prompt_for_download": false,
                "download.directory_upgrade": true,
            },
        },
    })
}

/// Firefox's capabilities: headless on `profile`, downloads into `downloads`,
/// no network of its own (with MOZ_DISABLE_NONLOCAL_CONNECTIONS, set in
/// `start_with`). geckodriver and Marionette already switch off much of it;
/// these make what this harness relies on explicit.
fn firefox_options(firefox: &Path, profile: &Path, downloads: &Path) -> Value {
    json!({
        "browserName": "firefox",
        "moz:firefoxOptions": {
            "binary": firefox,
            "args": [
                "-headless",
                "-profile", profile,
                "-width", WINDOW.0.to_string(),
                "-height", WINDOW.1.to_string(),
            ],
            "prefs": {
                // Downloads land in `downloads` without asking.
                "browser.download.folderList": 2,
                "browser.download.dir": downloads,
                "browser.download.useDownloadDir": true,
                "browser.download.always_ask_before_handling_new_types": false,
                "browser.helperApps.neverAsk.saveToDisk": "application/octet-stream",
                "browser.download.alwaysOpenPanel": false,
                // Dates and times as en-US writes them, whatever the machine's locale.
                "intl.locale.requested": "en-US",
                "intl.accept_languages": "en-US",
                // No network of its own.
                "app.update.auto": false,
                "app.update.disabledForTesting": true,
                "app.normandy.enabled": false,
                "app.normandy.api_url": "",
                "services.settings.server": "data:,#remote-settings-dummy/v1",
                "datareporting.policy.dataSubmissionEnabled": false,
                "datareporting.healthreport.uploadEnabled": false,
                "toolkit.telemetry.enabled": false,
                "toolkit.telemetry.server": "",
                "network.captive-portal-service.enabled": false,
                "network.connectivity-service.enabled": false,
                "browser.safebrowsing.downloads.enabled": false,
                "browser.safebrowsing.downloads.remote.enabled": false,
                "browser.safebrowsing.malware.enabled": false,
                "browser.safebrowsing.phishing.enabled": false,
                "browser.safebrowsing.update.enabled": false,
                "extensions.update.enabled": false,
                "extensions.getAddons.cache.enabled": false,
                "media.gmp-manager.updateEnabled": false,
                "browser.region.update.enabled": false,
                "browser.search.update": false,
                "network.trr.mode": 5,
                "network.dns.disablePrefetch": true,
                "network.prefetch-next": false,
                "network.http.speculative-parallel-limit": 0,
                "dom.push.connection.enabled": false,
            },
        },
    })
}

/// The port the driver says it listens on (chromedriver: "... started
/// successfully on port N."; geckodriver: "Listening on 127.0.0.1:N"); its
/// output is drained after that so it never blocks on a full pipe.
fn driver_port(kind: Kind, stdout: std::process::ChildStdout) -> u16 {
    let marker = match kind {
        Kind::Chromium => "started successfully on port ",
        Kind::Firefox => "Listening on 127.0.0.1:",
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let port = line
                .split_once(marker)
                .and_then(|(_, p)| p.trim().trim_end_matches('.').parse::<u16>().ok());
            if let Some(port) = port {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(port);
                }
            }
        }
    });
    rx.recv_timeout(START).unwrap_or_else(|_| {
        panic!(
            "{} did not say its port within {START:?}",
            kind.driver_name()
        )
    })
}

/// The harness's download path works headless, on the console's page, under its
/// strict CSP: a `blob:` link with `download`, as the page's "download the
/// secret" link will be, saves its file without a prompt.
#[test]
fn the_browser_saves_a_blob_download_without_asking() {
    if let Some(b) = Browser::start() {
        saves_a_blob_download_and_a_screenshot(b, "harness-check");
    }
}

/// The same in Firefox.
#[test]
fn firefox_saves_a_blob_download_without_asking() {
    if let Some(b) = Browser::firefox() {
        saves_a_blob_download_and_a_screenshot(b, "harness-check-firefox");
    }
}

fn saves_a_blob_download_and_a_screenshot(b: Browser, shot: &str) {
    let (d, _) = crate::console::daemon("");
    b.open(&format!("http://127.0.0.1:{}/console/", d.addr.port()));
    b.wait_text("#status", "Not logged in");
    b.exec(
        "const a = document.createElement('a');
         a.id = 'test-download';
         a.href = URL.createObjectURL(new Blob(['not a secret\\n'], { type: 'text/plain' }));
         a.download = 'harness-check.APIKEY';
         a.textContent = 'download';
         document.body.append(a);",
        vec![],
    );
    // The window the screenshots assume, and the page's locale.
    let size = b.exec(
        "return [window.outerWidth, window.outerHeight, navigator.language]",
        vec![],
    );
    assert_eq!(size, json!([WINDOW.0, WINDOW.1, "en-US"]));
    b.click("#test-download");
    assert_eq!(b.wait_download("harness-check.APIKEY"), b"not a secret\n");
    let shot = b.screenshot(shot);
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{shot:?} is no PNG");
    if std::env::var_os("APIKEYD_SCREENSHOTS").is_some() {
        std::fs::remove_file(shot).unwrap();
    }
}
