//! TCP and UDP relays of the rootless network, threads that live as long as the process:
//!
//! - published ports: a socket bound in the host's network namespace (before the process
//!   enters the user's network host) carries each TCP connection or UDP peer to the
//!   sandbox's address;
//! - the outbound TCP uplink: the user's network host redirects the sandboxes' outbound TCP
//!   to a listener of the holder's, which connects to the original destination from the
//!   host's namespace.
//!
//! TCP data moves with splice(2) through a pipe, socket to socket inside the kernel: both
//! ends are the kernel's own TCP, so a connection keeps its segmentation offloads and runs at
//! memory speed at any MTU (a user-mode TCP stack reassembles and copies every segment).

use std::collections::HashMap;
use std::io;
use std::net::{
    Shutdown, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream, UdpSocket,
};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::fcntl::SpliceFFlags;
use nix::sys::socket::{getsockopt, setsockopt, sockopt};

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
                    .spawn(move || accept_loop(listener, move |_| Some(target)))?;
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

/// Carries each connection redirected to `listener` (nftables `redirect`) to the address it
/// was meant for, connecting from the network namespace the process is in. A connection
/// without a redirection (somebody connecting to the listener itself) is reset.
pub fn relay_redirected(listener: TcpListener) -> io::Result<()> {
    std::thread::Builder::new()
        .name("uplink-tcp".into())
        .spawn(move || accept_loop(listener, original_destination))?;
    Ok(())
}

/// Where a redirected connection was going: conntrack's original destination, when it
/// differs from where it arrived.
fn original_destination(client: &TcpStream) -> Option<SocketAddr> {
    let local = client.local_addr().ok()?;
    let original = match local {
        SocketAddr::V4(_) => {
            let a = getsockopt(client, sockopt::OriginalDst).ok()?;
            SocketAddr::V4(SocketAddrV4::new(
                u32::from_be(a.sin_addr.s_addr).into(),
                u16::from_be(a.sin_port),
            ))
        }
        SocketAddr::V6(_) => {
            let a = getsockopt(client, sockopt::Ip6tOriginalDst).ok()?;
            SocketAddr::V6(SocketAddrV6::new(
                a.sin6_addr.s6_addr.into(),
                u16::from_be(a.sin6_port),
                0,
                0,
            ))
        }
    };
    (original != local).then_some(original)
}

/// Threads per connection: the kernel's default of 8 MiB is far more than a splice loop needs.
const CONN_STACK: usize = 64 * 1024;

fn accept_loop(
    listener: TcpListener,
    target: impl Fn(&TcpStream) -> Option<SocketAddr> + Send + 'static,
) {
    for client in listener.incoming() {
        let client = match client {
            Ok(c) => c,
            // Out of descriptors or memory: wait for connections to end instead of spinning.
            Err(_) => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let Some(to) = target(&client) else {
            reset(&client);
            continue;
        };
        let _ = std::thread::Builder::new()
            .name("relay-conn".into())
            .stack_size(CONN_STACK)
            .spawn(move || {
                let Ok(upstream) = TcpStream::connect(to) else {
                    // Refused or unreachable: the client learns it as a reset.
                    reset(&client);
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                // Shared, not duplicated: a connection costs two sockets and two pipes.
                let (client, upstream) = (Arc::new(client), Arc::new(upstream));
                let (c2, u2) = (client.clone(), upstream.clone());
                let back = std::thread::Builder::new()
                    .name("relay-back".into())
                    .stack_size(CONN_STACK)
                    .spawn(move || pump(&u2, &c2));
                pump(&client, &upstream);
                if let Ok(back) = back {
                    let _ = back.join();
                }
            });
    }
}

/// Closes with a reset rather than a FIN (SO_LINGER 0) once the last descriptor goes.
fn reset(stream: &TcpStream) {
    let _ = setsockopt(
        stream,
        sockopt::Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    );
    let _ = stream.shutdown(Shutdown::Read);
}

/// Copies `from` to `to` until EOF, then half-closes `to`; an error on either side aborts
/// both (the peer that did not fail sees a reset, as it would across one connection).
fn pump(from: &TcpStream, to: &TcpStream) {
    match splice_all(from, to) {
        Ok(()) => {
            let _ = to.shutdown(Shutdown::Write);
            let _ = from.shutdown(Shutdown::Read);
        }
        Err(_) => {
            reset(from);
            reset(to);
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        }
    }
}

/// Bytes per splice: a pipe of this size holds a full TSO segment several times over.
const PIPE_SIZE: usize = 1 << 20;

fn splice_all(from: &TcpStream, to: &TcpStream) -> io::Result<()> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // Larger than the default 64 KiB when the user's limit allows (pipe-max-size is 1 MiB).
    let chunk = nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32))
        .map(|n| n as usize)
        .unwrap_or(1 << 16);
    loop {
        let n = retry(|| {
            nix::fcntl::splice(
                from.as_fd(),
                None,
                &w,
                None,
                chunk,
                SpliceFFlags::SPLICE_F_MOVE,
            )
        })?;
        if n == 0 {
            return Ok(());
        }
        let mut left = n;
        while left > 0 {
            let m = retry(|| {
                nix::fcntl::splice(
                    &r,
                    None,
                    to.as_fd(),
                    None,
                    left,
                    SpliceFFlags::SPLICE_F_MOVE,
                )
            })?;
            if m == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            left -= m;
        }
    }
}

fn retry(mut f: impl FnMut() -> nix::Result<usize>) -> io::Result<usize> {
    loop {
        match f() {
            Err(nix::errno::Errno::EINTR) => continue,
            r => return r.map_err(io::Error::from),
        }
    }
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
