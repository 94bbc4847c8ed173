//! A real SMTP server (mailin-embedded) on 127.0.0.1 that keeps every message it
//! receives and when: the mail sink of the alert tests and of the alerts benchmark,
//! which includes this file with `#[path]`.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use mailin_embedded::{response, Handler, Response, Server};

/// One message as the server took it.
#[derive(Debug, Clone)]
pub struct Mail {
    /// The envelope recipients.
    pub to: Vec<String>,
    /// Headers and body, lines ending in `\n`.
    pub data: String,
    /// When the end of its data arrived (before any `delay` of the server).
    pub received_at: DateTime<Utc>,
}

impl Mail {
    /// The data with quoted-printable's soft line breaks joined, so that a value the
    /// encoder wrapped (an id, a time) reads whole wherever a longer line put the
    /// break.
    pub fn unwrapped(&self) -> String {
        self.data.replace("=\r\n", "").replace("=\n", "")
    }

    pub fn header(&self, name: &str) -> Option<String> {
        let prefix = format!("{}:", name.to_lowercase());
        self.data
            .lines()
            .take_while(|l| !l.is_empty())
            .find(|l| l.to_lowercase().starts_with(&prefix))
            .map(|l| l[prefix.len()..].trim().to_owned())
    }
}

#[derive(Clone)]
struct Sink {
    mails: Arc<Mutex<Vec<Mail>>>,
    to: Vec<String>,
    data: Vec<u8>,
    delay: Duration,
}

impl Handler for Sink {
    fn data_start(&mut self, _domain: &str, _from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.to = to.to_vec();
        self.data.clear();
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        let received_at = Utc::now();
        std::thread::sleep(self.delay);
        self.mails.lock().unwrap().push(Mail {
            to: std::mem::take(&mut self.to),
            data: String::from_utf8_lossy(&std::mem::take(&mut self.data)).replace("\r\n", "\n"),
            received_at,
        });
        response::OK
    }
}

/// The server; its threads live until the process exits.
pub struct Smtp {
    pub port: u16,
    mails: Arc<Mutex<Vec<Mail>>>,
}

impl Smtp {
    /// On a port of its own, answering at once.
    pub fn start() -> Self {
        Self::on(TcpListener::bind("127.0.0.1:0").unwrap(), Duration::ZERO)
    }

    /// On `listener` (say a port the daemon was given while nothing listened on it),
    /// answering each message after `delay`.
    pub fn on(listener: TcpListener, delay: Duration) -> Self {
        Self::serve(listener, delay, 8)
    }

    /// On a port of its own, answering at once, on up to `threads` connections at a
    /// time (the benchmark's pooled transport opens many).
    pub fn with_threads(threads: u32) -> Self {
        Self::serve(
            TcpListener::bind("127.0.0.1:0").unwrap(),
            Duration::ZERO,
            threads,
        )
    }

    fn serve(listener: TcpListener, delay: Duration, threads: u32) -> Self {
        let port = listener.local_addr().unwrap().port();
        let mails = Arc::new(Mutex::new(Vec::new()));
        let sink = Sink {
            mails: mails.clone(),
            to: Vec::new(),
            data: Vec::new(),
            delay,
        };
        let mut server = Server::new(sink);
        server
            .with_name("smtp.test")
            .with_num_threads(threads)
            .with_tcp_listener(listener);
        std::thread::spawn(move || {
            let _ = server.serve();
        });
        Self { port, mails }
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }

    /// How many messages arrived so far.
    pub fn count(&self) -> usize {
        self.mails.lock().unwrap().len()
    }

    /// The messages after the first `skip`, in the order they arrived.
    pub fn mails_since(&self, skip: usize) -> Vec<Mail> {
        self.mails.lock().unwrap()[skip..].to_vec()
    }
}
