//! The daemon as a systemd service sees it: sd_notify states over $NOTIFY_SOCKET.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use crate::util::TestDaemon;

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = sock
        .recv(&mut buf)
        .expect("no sd_notify message within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn notifies_ready_reloading_and_stopping() {
    let mut d = TestDaemon::start();
    d.stop();
    let path = d.path("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    d.spawn(&[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    assert_eq!(recv(&sock), "READY=1");
    d.signal("HUP");
    let reloading = recv(&sock);
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading:?}"
    );
    let usec: u64 = reloading.rsplit('=').next().unwrap().parse().unwrap();
    assert!(usec > 0);
    assert_eq!(recv(&sock), "READY=1");
    d.stop();
    assert_eq!(recv(&sock), "STOPPING=1");
}
