//! What runs in a lab while it is up: netbox's own listeners (TCP accept-and-close, UDP echo)
//! that checks aim at, per-link packet captures, and the file's start commands.

use std::net::{TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::topology::Listen;
use super::{BuildOptions, Lab, LabError, Result};
use crate::sys::capture;

#[derive(Default)]
pub struct Services {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Listener threads (inside their nodes).
    listeners: Vec<JoinHandle<std::result::Result<(), crate::sys::netns::NetnsError>>>,
    /// Sockets to shut down so their threads wake up (raw numbers stay valid: each thread
    /// owns its socket until it exits, after the shutdown).
    wake: Vec<i32>,
    /// Start commands, by node.
    children: Vec<(String, Child)>,
}

impl Services {
    pub fn start(lab: &Lab, options: &BuildOptions) -> Result<Services> {
        let mut s = Services::default();
        // Commands first: fewer threads to copy into the fork.
        for node in &lab.plan.nodes {
            s.start_node(lab, &node.name)?;
        }
        // Each listener binds and serves on its own thread inside its node: binding in
        // parallel, without a separate namespace switch per socket. Each reports its socket
        // (to be woken at stop) or its error.
        let (tx, rx) = std::sync::mpsc::channel::<std::result::Result<i32, String>>();
        let mut expected = 0;
        for node in &lab.plan.nodes {
            let ns = lab.node(&node.name)?;
            for l in &node.listen {
                let (tx, stop, name, l) = (tx.clone(), s.stop.clone(), node.name.clone(), *l);
                expected += 1;
                s.listeners
                    .push(ns.spawn_in(move || serve(l, &name, &tx, &stop))?);
            }
        }
        // ICMP echo responders on TUN devices that ask for one.
        for node in &lab.plan.nodes {
            let ns = lab.node(&node.name)?;
            for dev in node.tun.iter().filter(|t| t.echo) {
                let (tx, stop, name, dev) = (
                    tx.clone(),
                    s.stop.clone(),
                    node.name.clone(),
                    dev.name.clone(),
                );
                expected += 1;
                s.listeners
                    .push(ns.spawn_in(move || echo_responder(&dev, &name, &tx, &stop))?);
            }
        }
        drop(tx);
        for _ in 0..expected {
            match rx.recv() {
                Ok(Ok(fd)) if fd >= 0 => s.wake.push(fd),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    s.stop();
                    return Err(LabError::Invalid(e));
                }
                Err(_) => break,
            }
        }
        if let Some(dir) = &options.capture {
            for (i, link) in lab.plan.links.iter().enumerate() {
                let (ns_name, ifname) = match &link.a {
                    super::topology::EndPlan::Node { node, iface } => (node, iface.name.clone()),
                    super::topology::EndPlan::Switch { .. } => continue,
                };
                let file = dir.join(capture_file_name(i, link));
                let thread = capture::start(lab.node(ns_name)?, &ifname, &file, s.stop.clone())
                    .map_err(|e| match e {
                        capture::CaptureError::Netns(e) => LabError::Netns(e),
                        capture::CaptureError::Io { what, source } => LabError::Io { what, source },
                    })?;
                s.threads.push(thread);
            }
        }
        Ok(s)
    }
}

/// The pcap file name of link number `index`.
fn capture_file_name(index: usize, link: &super::topology::LinkPlan) -> String {
    let clean = |s: String| s.replace([':', '/'], "_");
    format!(
        "{:02}-{}-{}.pcap",
        index + 1,
        clean(link.a.label()),
        clean(link.b.label())
    )
}

/// Binds one listener in the calling thread's namespace, reports it, and serves until stopped.
fn serve(
    l: Listen,
    node: &str,
    report: &std::sync::mpsc::Sender<std::result::Result<i32, String>>,
    stop: &AtomicBool,
) {
    let fail = |what: String, e: std::io::Error| {
        let _ = report.send(Err(format!("{what} in \"{node}\": {e}")));
    };
    match l {
        Listen::Tcp(port) => {
            let listener = match TcpListener::bind(("0.0.0.0", port)) {
                Ok(l) => l,
                Err(e) => return fail(format!("listening on tcp:{port}"), e),
            };
            let _ = report.send(Ok(listener.as_raw_fd()));
            for conn in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                drop(conn);
            }
        }
        Listen::Udp(port) => {
            let sock = match UdpSocket::bind(("0.0.0.0", port)) {
                Ok(s) => s,
                Err(e) => return fail(format!("listening on udp:{port}"), e),
            };
            let _ = sock.set_read_timeout(Some(Duration::from_millis(250)));
            let _ = report.send(Ok(sock.as_raw_fd()));
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], peer);
                }
            }
        }
    }
}

/// Attaches to the TUN device `dev` in the calling thread's namespace and answers the ICMP
/// echo requests read from it until stopped. It reports no socket to wake: it polls `stop`.
fn echo_responder(
    dev: &str,
    node: &str,
    report: &std::sync::mpsc::Sender<std::result::Result<i32, String>>,
    stop: &AtomicBool,
) {
    use std::os::fd::AsFd;
    let queue = match crate::sys::tuntap::TunBuilder::tun().name(dev).open() {
        Ok(tun) => match tun.into_queues().into_iter().next() {
            Some(q) => q,
            None => {
                let _ = report.send(Err(format!("{dev} in \"{node}\": no queue")));
                return;
            }
        },
        Err(e) => {
            let _ = report.send(Err(format!("echo responder on {dev} in \"{node}\": {e}")));
            return;
        }
    };
    let _ = report.send(Ok(-1));
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [nix::poll::PollFd::new(
            queue.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut fds, 250u16) {
            Ok(n) if n > 0 => {}
            _ => continue,
        }
        let Ok(n) = queue.recv(&mut buf) else {
            continue;
        };
        if let Some(reply) = crate::sys::tuntap::packet::echo_reply(&buf[..n]) {
            let _ = queue.send(&reply);
        }
    }
}

impl Services {
    /// Starts the start commands of `node` (unless they run already).
    pub fn start_node(&mut self, lab: &Lab, node: &str) -> Result<()> {
        if self.children.iter().any(|(n, _)| n == node) {
            return Ok(());
        }
        let Some(plan) = lab.plan.node(node) else {
            return Ok(());
        };
        for cmd in &plan.start {
            let mut c = lab.command(node, "sh")?;
            c.args(["-c", cmd]).stdin(Stdio::null());
            std::os::unix::process::CommandExt::process_group(&mut c, 0);
            // A crashed holder takes its commands along: nothing outlives the lab.
            // SAFETY: prctl is async-signal-safe.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut c, || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = c.spawn().map_err(|source| LabError::Io {
                what: format!("starting {cmd:?} in node \"{node}\""),
                source,
            })?;
            self.children.push((node.to_string(), child));
        }
        Ok(())
    }

    /// Stops the start commands of `node` (their whole process groups).
    pub fn stop_node(&mut self, node: &str) {
        let (stop, keep): (Vec<_>, Vec<_>) = self.children.drain(..).partition(|(n, _)| n == node);
        self.children = keep;
        for (_, child) in stop {
            kill_group(child);
        }
    }

    /// Stops everything; safe to call twice.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for fd in self.wake.drain(..) {
            // SAFETY: shutdown on a socket its thread still owns; it only wakes the thread.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
        for (_, child) in self.children.drain(..) {
            kill_group(child);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for t in self.listeners.drain(..) {
            let _ = t.join();
        }
    }
}

fn kill_group(mut child: Child) {
    // SAFETY: a signal to the process group the child leads.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let _ = child.wait();
}

impl Drop for Services {
    fn drop(&mut self) {
        self.stop();
    }
}
