//! Port relays of rootless published ports: a socket bound in the host's network namespace
//! (before the process enters the user's network host) and threads that carry each TCP
//! connection or UDP peer to the sandbox's address. The relays live as long as the process.

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A UDP peer's session ends after this long without a datagram from the sandbox.
const UDP_IDLE: Duration = Duration::from_secs(60);

/// A bound host socket.
#[derive(Debug)]
pub enum Bound {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl Bound {
    /// Binds `addr` (TCP listening, or UDP) in the calling thread's network namespace.
    pub fn bind(addr: SocketAddr, udp: bool) -> io::Result<Bound> {
        if udp {
            UdpSocket::bind(addr).map(Bound::Udp)
        } else {
            TcpListener::bind(addr).map(Bound::Tcp)
        }
    }

    /// Relays everything that arrives to `target` on threads of their own; sockets to the
    /// target are made in the network namespace the process is in when this is called.
    pub fn relay(self, target: SocketAddr) -> io::Result<()> {
        match self {
            Bound::Tcp(listener) => {
                std::thread::Builder::new()
                    .name("relay-tcp".into())
                    .spawn(move || accept_loop(listener, target))?;
            }
            Bound::Udp(socket) => {
                std::thread::Builder::new()
                    .name("relay-udp".into())
                    .spawn(move || udp_loop(socket, target))?;
            }
        }
        Ok(())
    }
}

fn accept_loop(listener: TcpListener, target: SocketAddr) {
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        let _ = std::thread::Builder::new()
            .name("relay-conn".into())
            .spawn(move || {
                let Ok(upstream) = TcpStream::connect(target) else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
                    return;
                };
                let back = std::thread::Builder::new()
                    .name("relay-back".into())
                    .spawn(move || pump(u2, c2));
                pump(client, upstream);
                if let Ok(back) = back {
                    let _ = back.join();
                }
            });
    }
}

/// Copies `from` to `to` until EOF, then half-closes `to`.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

fn udp_loop(socket: UdpSocket, target: SocketAddr) {
    let socket = Arc::new(socket);
    let sessions: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let existing = sessions.lock().ok().and_then(|s| s.get(&peer).cloned());
        let session = match existing {
            Some(s) => s,
            None => {
                let local: SocketAddr = if target.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    ([0u16; 8], 0).into()
                };
                let Ok(up) = UdpSocket::bind(local) else {
                    continue;
                };
                if up.connect(target).is_err() {
                    continue;
                }
                let _ = up.set_read_timeout(Some(UDP_IDLE));
                let up = Arc::new(up);
                if let Ok(mut s) = sessions.lock() {
                    s.insert(peer, up.clone());
                }
                let (reply_to, sessions, up2) = (socket.clone(), sessions.clone(), up.clone());
                let _ = std::thread::Builder::new()
                    .name("relay-udp-peer".into())
                    .spawn(move || {
                        let mut buf = vec![0u8; 65536];
                        while let Ok(n) = up2.recv(&mut buf) {
                            let _ = reply_to.send_to(&buf[..n], peer);
                        }
                        if let Ok(mut s) = sessions.lock() {
                            s.remove(&peer);
                        }
                    });
                up
            }
        };
        let _ = session.send(&buf[..n]);
    }
}
