//! An upstream for the proxy and webhook-plugin tests: answers every request with
//! 200 and the request head as the body, and keeps each request's head and body.
//! With a page (`Echo::serving`), the other site of the browser's CSRF test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An upstream answering every request with 200 and the request head as the body,
/// keeping each request's head and body.
pub struct Echo {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<(String, String)>>>,
    stop: Arc<AtomicBool>,
}

impl Echo {
    pub fn start() -> Self {
        Self::answering(None)
    }

    /// Answers every request with `html` instead of the request head.
    pub fn serving(html: &str) -> Self {
        Self::answering(Some(Arc::from(html)))
    }

    fn answering(page: Option<Arc<str>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let seen = seen2.clone();
                let page = page.clone();
                std::thread::spawn(move || Self::serve(conn, &seen, page.as_deref()));
            }
        });
        Self { addr, seen, stop }
    }

    fn serve(conn: TcpStream, seen: &Mutex<Vec<(String, String)>>, page: Option<&str>) {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
        let mut reader = BufReader::new(&conn);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line.trim_end().is_empty() => break,
                Ok(_) => head.push_str(&line),
            }
        }
        let len = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let body = String::from_utf8_lossy(&body).into_owned();
        seen.lock().unwrap().push((head.clone(), body));
        let (kind, answer) = match page {
            Some(html) => ("text/html; charset=utf-8", html),
            None => ("text/plain", head.as_str()),
        };
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
            answer.len()
        );
        let _ = (&conn).write_all(resp.as_bytes());
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Head and body of each request received, in order.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.seen.lock().unwrap().clone()
    }

    /// The request line of the last request received.
    pub fn last_request_line(&self) -> String {
        let seen = self.seen.lock().unwrap();
        seen.last()
            .and_then(|(h, _)| h.lines().next())
            .unwrap_or_default()
            .to_owned()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}
