//! TUN/TAP devices: the library's queues against the kernel's routing, the `netbox tuntap`
//! commands and `netbox run --tun`, checked with `ip -j` and real sockets; the examples run.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::process::{Command, Stdio};

use netbox::sys::tuntap::{packet, vnet, Offloads, Queue, TunBuilder, VnetHeader};

use crate::harness::{example, ip_json, link_names, netbox, private_host, sh};

/// Reads packets until `want` accepts one (the kernel also sends IPv6 noise); bounded wait.
fn recv_matching(queue: &Queue, want: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut buf = vec![0u8; vnet::HDR_LEN + 65_536];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        assert!(std::time::Instant::now() < deadline, "no matching packet");
        let mut fds = [PollFd::new(queue.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(500u16)).expect("poll") == 0 {
            continue;
        }
        let n = queue.recv(&mut buf).expect("read from the queue");
        if want(&buf[..n]) {
            return buf[..n].to_vec();
        }
    }
}

fn is_udp4_to(p: &[u8], dst: [u8; 4]) -> bool {
    p.len() >= 28 && p[0] >> 4 == 4 && p[9] == 17 && p[16..20] == dst
}

/// Address and bring up a device, as the independent tool does it.
fn address(name: &str, cidr: &str) {
    sh(&format!(
        "ip addr add {cidr} dev {name} && ip link set {name} up"
    ));
}

/// Makes /dev/net/tun open to everybody inside this private host (as Debian ships it; this
/// machine has it root-only), so ownership is what decides who attaches.
fn clone_device_open_to_all() {
    sh("mknod -m 666 /run/netbox/tun c 10 200 && mount --bind /run/netbox/tun /dev/net/tun");
}

fn linkinfo(name: &str) -> serde_json::Value {
    ip_json(&format!("-d link show dev {name}"))[0]["linkinfo"].clone()
}

#[test]
fn routed_packets_are_read_intact() {
    if !private_host("tuntap::routed_packets_are_read_intact") {
        return;
    }
    let tun = TunBuilder::tun().name("tun0").open().expect("open tun0");
    address("tun0", "10.1.0.1/24");
    let sock = UdpSocket::bind("10.1.0.1:0").expect("bind");
    let payload: Vec<u8> = (0..63u8).collect();
    sock.send_to(&payload, "10.1.0.2:9999").expect("send");
    let p = recv_matching(&tun.queues()[0], |p| is_udp4_to(p, [10, 1, 0, 2]));
    assert_eq!(p.len(), 20 + 8 + 63, "IPv4 + UDP + payload, no PI prefix");
    assert_eq!(&p[12..16], &[10, 1, 0, 1]);
    assert_eq!(u16::from_be_bytes([p[22], p[23]]), 9999);
    assert_eq!(&p[28..], payload.as_slice());
    assert_eq!(packet::checksum(&p[..20]), 0, "IP header intact");
}

#[test]
fn written_packets_reach_a_socket() {
    if !private_host("tuntap::written_packets_reach_a_socket") {
        return;
    }
    let tun = TunBuilder::tun().name("tun0").open().expect("open tun0");
    address("tun0", "10.1.0.1/24");
    let sock = UdpSocket::bind("10.1.0.1:6000").expect("bind");
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let datagram = packet::ipv4_udp(
        (Ipv4Addr::new(10, 1, 0, 2), 5000),
        (Ipv4Addr::new(10, 1, 0, 1), 6000),
        b"from user space",
    );
    let written = tun.queues()[0].send(&datagram).expect("write");
    assert_eq!(written, datagram.len());
    let mut buf = [0u8; 100];
    let (n, from) = sock.recv_from(&mut buf).expect("the datagram arrives");
    assert_eq!(&buf[..n], b"from user space");
    assert_eq!(from.to_string(), "10.1.0.2:5000");
}

#[test]
fn async_queue_reads_and_writes() {
    if !private_host("tuntap::async_queue_reads_and_writes") {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let tun = TunBuilder::tun().name("tun0").open().expect("open tun0");
        address("tun0", "10.1.0.1/24");
        let queue = tun.into_async_queue().expect("async");
        let sock = UdpSocket::bind("10.1.0.1:6000").expect("bind");
        for i in 0..10u8 {
            sock.send_to(&[i; 20], "10.1.0.2:7000").expect("send");
        }
        let mut bufs = vec![vec![0u8; 2048]; 16];
        let mut lens = vec![0usize; 16];
        let mut seen = vec![];
        while seen.len() < 10 {
            let n = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                queue.recv_many(&mut bufs, &mut lens),
            )
            .await
            .expect("packets arrive")
            .expect("read");
            for (b, l) in bufs.iter().zip(&lens).take(n) {
                if is_udp4_to(&b[..*l], [10, 1, 0, 2]) {
                    seen.push(b[28]);
                }
            }
        }
        assert_eq!(seen, (0..10).collect::<Vec<u8>>(), "all, in order");
        sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        let reply = packet::ipv4_udp(
            (Ipv4Addr::new(10, 1, 0, 2), 7000),
            (Ipv4Addr::new(10, 1, 0, 1), 6000),
            b"async",
        );
        queue.send(&reply).await.expect("write");
        let mut buf = [0u8; 16];
        let n = sock.recv(&mut buf).expect("reply arrives");
        assert_eq!(&buf[..n], b"async");
    });
}

#[test]
fn tap_delivers_frames() {
    if !private_host("tuntap::tap_delivers_frames") {
        return;
    }
    let tap = TunBuilder::tap().name("tap0").open().expect("open tap0");
    assert_eq!(linkinfo("tap0")["info_data"]["type"], "tap");
    address("tap0", "10.2.0.1/24");
    let sock = UdpSocket::bind("10.2.0.1:0").expect("bind");
    sock.send_to(b"x", "10.2.0.2:9").expect("send");
    // The kernel resolves 10.2.0.2 first: an Ethernet frame carrying an ARP request for it.
    let frame = recv_matching(&tap.queues()[0], |f| {
        f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[38..42] == [10, 2, 0, 2]
    });
    assert_eq!(&frame[..6], &[0xff; 6], "broadcast");
    let mac = ip_json("link show dev tap0")[0]["address"]
        .as_str()
        .expect("mac")
        .to_string();
    assert_eq!(
        netbox::sys::netlink::format_mac(&frame[6..12].try_into().expect("6")),
        mac
    );
}

#[test]
fn persist_owner_and_group_survive_close() {
    if !private_host("tuntap::persist_owner_and_group_survive_close") {
        return;
    }
    let name = TunBuilder::tun()
        .name("keep0")
        .owner(4242)
        .group(4343)
        .create_persistent()
        .expect("create");
    assert_eq!(name, "keep0");
    let info = linkinfo("keep0");
    assert_eq!(info["info_kind"], "tun");
    assert_eq!(info["info_data"]["persist"], true);
    assert_eq!(
        info["info_data"]["user"].to_string().trim_matches('"'),
        "4242"
    );
    assert_eq!(
        info["info_data"]["group"].to_string().trim_matches('"'),
        "4343"
    );
    // The owner attaches without CAP_NET_ADMIN.
    clone_device_open_to_all();
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            "4242",
            "--regid",
            "4343",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(example("tun_echo"))
        .args(["--name", "keep0", "--attach", "--count", "0"])
        .output()
        .expect("setpriv");
    assert!(out.status.success(), "owner attach: {out:?}");
    // Anybody else does not.
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            "4444",
            "--regid",
            "4444",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(example("tun_echo"))
        .args(["--name", "keep0", "--attach", "--count", "0"])
        .output()
        .expect("setpriv");
    assert!(!out.status.success(), "a stranger attached");
}

#[test]
fn multi_queue_opens_n_queues() {
    if !private_host("tuntap::multi_queue_opens_n_queues") {
        return;
    }
    let tun = TunBuilder::tun()
        .name("mq0")
        .multi_queue(4)
        .open()
        .expect("open 4 queues");
    assert_eq!(tun.queues().len(), 4);
    let fds: std::collections::HashSet<i32> =
        tun.queues().iter().map(|q| q.as_fd().as_raw_fd()).collect();
    assert_eq!(fds.len(), 4);
    assert_eq!(linkinfo("mq0")["info_data"]["multi_queue"], true);
    let ls = String::from_utf8(netbox().args(["tuntap", "ls"]).output().expect("ls").stdout)
        .expect("utf8");
    let line = ls
        .lines()
        .find(|l| l.starts_with("mq0 "))
        .expect("mq0 listed");
    assert!(line.contains("multi_queue"), "{line}");
    assert_eq!(
        line.split_whitespace().last(),
        Some("4"),
        "4 queues attached: {line}"
    );
    // The kernel spreads flows over the queues; every queue takes packets.
    address("mq0", "10.4.0.1/24");
    let sock = UdpSocket::bind("10.4.0.1:0").expect("bind");
    for port in 1000..1064u16 {
        sock.send_to(b"q", ("10.4.0.2", port)).expect("send");
    }
    for q in tun.queues() {
        ioctl_nonblocking(q);
    }
    let mut total = 0;
    let mut buf = [0u8; 2048];
    for q in tun.queues() {
        while let Ok(n) = q.recv(&mut buf) {
            if is_udp4_to(&buf[..n], [10, 4, 0, 2]) {
                total += 1;
            }
        }
    }
    assert_eq!(total, 64, "every datagram came out of one of the queues");
}

fn ioctl_nonblocking(q: &Queue) {
    let fd = q.as_fd();
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).expect("getfl");
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFL(
            nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK,
        ),
    )
    .expect("setfl");
}

/// A TUN with a virtio-net header and UDP segmentation offloads, addressed and up.
fn uso_tun(name: &str, addr: &str) -> netbox::sys::tuntap::Tun {
    let tun = TunBuilder::tun()
        .name(name)
        .offloads(Offloads::CSUM | Offloads::USO4 | Offloads::USO6)
        .open()
        .expect("open with offloads");
    address(name, addr);
    tun
}

#[test]
fn vnet_hdr_with_uso_delivers_superpackets() {
    if !private_host("tuntap::vnet_hdr_with_uso_delivers_superpackets") {
        return;
    }
    let tun = uso_tun("gso0", "10.5.0.1/24");
    assert_eq!(linkinfo("gso0")["info_data"]["vnet_hdr"], true);
    let sock = UdpSocket::bind("10.5.0.1:0").expect("bind");
    nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::UdpGsoSegment, &1000)
        .expect("UDP_SEGMENT");
    sock.send_to(&vec![7u8; 10_000], "10.5.0.2:9")
        .expect("send");
    let p = recv_matching(&tun.queues()[0], |p| {
        p.len() > vnet::HDR_LEN && is_udp4_to(&p[vnet::HDR_LEN..], [10, 5, 0, 2])
    });
    let hdr = VnetHeader::parse(&p).expect("header");
    assert_eq!(hdr.gso_type, vnet::GsoType::UdpL4, "{hdr:?}");
    assert_eq!(hdr.gso_size, 1000);
    assert_eq!(p.len() - vnet::HDR_LEN, 20 + 8 + 10_000, "one superpacket");
    assert_eq!(hdr.segments(p.len() - vnet::HDR_LEN), 10);
}

#[test]
fn cli_add_ls_del() {
    if !private_host("tuntap::cli_add_ls_del") {
        return;
    }
    let out = netbox()
        .args([
            "tuntap",
            "add",
            "t0",
            "--tap",
            "--persist",
            "--owner",
            "4242",
            "--group",
            "4343",
        ])
        .args(["--multi-queue", "3"])
        .output()
        .expect("add");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t0");
    let info = linkinfo("t0");
    assert_eq!(info["info_data"]["type"], "tap");
    assert_eq!(info["info_data"]["persist"], true);
    assert_eq!(info["info_data"]["multi_queue"], true);
    let out = netbox()
        .args(["tuntap", "add", "x%d"])
        .output()
        .expect("add");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "x0",
        "kernel-chosen name"
    );
    let ls = String::from_utf8(netbox().args(["tuntap", "ls"]).output().expect("ls").stdout)
        .expect("utf8");
    let t0 = ls
        .lines()
        .find(|l| l.starts_with("t0 "))
        .expect("t0 listed");
    let cols: Vec<&str> = t0.split_whitespace().collect();
    assert_eq!(cols[1], "tap");
    assert!(
        cols[2].contains("persist") && cols[2].contains("multi_queue") && cols[2].contains("no_pi")
    );
    assert_eq!(&cols[3..], &["4242", "4343", "0"]);
    assert!(ls
        .lines()
        .any(|l| l.starts_with("x0 ") && l.contains(" tun ")));
    for name in ["t0", "x0"] {
        let out = netbox()
            .args(["tuntap", "del", name])
            .output()
            .expect("del");
        assert!(out.status.success(), "{out:?}");
    }
    let left: Vec<String> = link_names().into_iter().filter(|n| n != "lo").collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn bad_input_gets_clear_errors_and_changes_nothing() {
    if !private_host("tuntap::bad_input_gets_clear_errors_and_changes_nothing") {
        return;
    }
    sh("ip link add br9 type bridge");
    let before = link_names();
    let err = |args: &[&str]| {
        let out = netbox().arg("tuntap").args(args).output().expect("netbox");
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = err(&["add", "sixteen-bytes-xx"]);
    assert!(e.contains("longer than 15 bytes"), "{e}");
    let e = err(&["add", "br9"]);
    assert!(
        e.contains("\"br9\"") && e.contains("bridge") && e.contains("not a TUN/TAP"),
        "{e}"
    );
    let e = err(&["add", "br9", "--tap"]);
    assert!(e.contains("not a TUN/TAP"), "{e}");
    let e = err(&["del", "br9"]);
    assert!(e.contains("not a TUN/TAP device"), "{e}");
    let e = err(&["del", "nothere"]);
    assert!(e.contains("no TUN/TAP device \"nothere\""), "{e}");
    let e = err(&["add", "t1", "--owner", "no-such-user-here"]);
    assert!(e.contains("no such user"), "{e}");
    // Without root: no permission on /dev/net/tun (or, where it is open to all, no
    // CAP_NET_ADMIN).
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            "4444",
            "--regid",
            "4444",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(crate::harness::netbox_bin())
        .args(["tuntap", "add", "t2"])
        .output()
        .expect("setpriv");
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        e.contains("/dev/net/tun") || e.contains("CAP_NET_ADMIN"),
        "unclear error: {e}"
    );
    // The library refuses the same way: a bridge of that name is not a TUN.
    let e = TunBuilder::tun()
        .name("br9")
        .open()
        .expect_err("br9 is a bridge");
    assert!(
        e.to_string().contains("exists but is not a TUN device"),
        "{e}"
    );
    assert_eq!(link_names(), before, "nothing changed");
}

#[test]
fn run_tun_creates_the_device_before_cmd_starts() {
    if !private_host("tuntap::run_tun_creates_the_device_before_cmd_starts") {
        return;
    }
    let out = netbox()
        .args([
            "run",
            "--net",
            "none",
            "--tun",
            "tun5:10.55.0.1/24",
            "--tun",
            "tun6",
        ])
        .args(["--", "ip", "-j", "-d", "addr", "show"])
        .env_remove("SUDO_UID")
        .stdin(Stdio::null())
        .output()
        .expect("netbox run");
    assert!(out.status.success(), "{out:?}");
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let tun5 = links
        .as_array()
        .and_then(|l| l.iter().find(|l| l["ifname"] == "tun5"))
        .expect("tun5 inside");
    assert_eq!(tun5["linkinfo"]["info_data"]["persist"], true);
    assert_eq!(tun5["addr_info"][0]["local"], "10.55.0.1");
    assert_eq!(tun5["addr_info"][0]["prefixlen"], 24);
    assert!(links
        .as_array()
        .expect("array")
        .iter()
        .any(|l| l["ifname"] == "tun6"));
    assert!(
        !link_names().iter().any(|n| n.starts_with("tun")),
        "nothing on the host"
    );
}

#[test]
fn run_tun_cmd_attaches_as_its_user_on_a_bridge_network() {
    if !private_host("tuntap::run_tun_cmd_attaches_as_its_user_on_a_bridge_network") {
        return;
    }
    // CMD runs as an unprivileged user without CAP_NET_ADMIN: it attaches because the device
    // is its own, through the sandbox's own /dev/net/tun, even where the host's is root-only.
    sh("mknod -m 600 /run/netbox/tun c 10 200 && mount --bind /run/netbox/tun /dev/net/tun");
    let out = netbox()
        .args(["run", "--user", "4242", "--tun", "tun5:10.55.0.1/24", "--"])
        .arg(example("tun_echo"))
        .args(["--name", "tun5", "--attach", "--count", "0"])
        .env_remove("SUDO_UID")
        .stdin(Stdio::null())
        .output()
        .expect("netbox run");
    assert!(out.status.success(), "{out:?}");
    // A name the sandbox already uses: refused, and the sandbox is rolled back.
    let e = netbox()
        .args(["run", "--tun", "eth0", "--", "true"])
        .env_remove("SUDO_UID")
        .stdin(Stdio::null())
        .output()
        .expect("netbox run");
    assert_eq!(e.status.code(), Some(125));
    let msg = String::from_utf8_lossy(&e.stderr);
    assert!(
        msg.contains("\"eth0\" exists but is not a TUN device"),
        "{msg}"
    );
    crate::harness::eventually("the sandbox's veth to go", || {
        !link_names().iter().any(|n| n.starts_with("nbx"))
    });
    let e = netbox()
        .args([
            "run",
            "--net",
            "none",
            "--tun",
            "a-name-far-too-long",
            "--",
            "true",
        ])
        .output()
        .expect("netbox run");
    assert!(!e.status.success());
    assert!(
        String::from_utf8_lossy(&e.stderr).contains("longer than 15 bytes"),
        "{e:?}"
    );
}

/// An ICMP echo request through a raw socket; returns the echo reply's IP packet.
fn ping(dst: Ipv4Addr, id: u16, seq: u16) -> Vec<u8> {
    // SAFETY: plain socket calls on a descriptor we own and close.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP);
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 10,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
        let mut icmp = vec![8u8, 0, 0, 0];
        icmp.extend_from_slice(&id.to_be_bytes());
        icmp.extend_from_slice(&seq.to_be_bytes());
        icmp.extend_from_slice(b"netbox ping payload");
        let sum = packet::checksum(&icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(dst.octets()),
            },
            sin_zero: [0; 8],
        };
        let sent = libc::sendto(
            fd,
            icmp.as_ptr().cast(),
            icmp.len(),
            0,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        assert_eq!(
            sent as usize,
            icmp.len(),
            "{}",
            std::io::Error::last_os_error()
        );
        let mut buf = vec![0u8; 1500];
        loop {
            let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
            assert!(n > 0, "no echo reply: {}", std::io::Error::last_os_error());
            let p = &buf[..n as usize];
            let ihl = usize::from(p[0] & 0x0f) * 4;
            // Raw ICMP sockets see every ICMP packet: wait for our reply.
            if p[ihl] == 0
                && p[ihl + 4..ihl + 8] == [id.to_be_bytes(), seq.to_be_bytes()].concat()[..]
            {
                libc::close(fd);
                return p.to_vec();
            }
        }
    }
}

#[test]
fn tun_echo_example_answers_pings() {
    if !private_host("tuntap::tun_echo_example_answers_pings") {
        return;
    }
    let mut child = Command::new(example("tun_echo"))
        .args(["--address", "10.200.0.1/24", "--count", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start tun_echo");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = lines.next().expect("a line").expect("read");
    assert!(ready.contains("answering pings on tun0"), "{ready}");
    for seq in 1..=2 {
        let reply = ping(Ipv4Addr::new(10, 200, 0, 2), 0x4e42, seq);
        assert_eq!(&reply[12..16], &[10, 200, 0, 2], "answered for 10.200.0.2");
        assert!(reply.ends_with(b"netbox ping payload"));
        let said = lines.next().expect("a line").expect("read");
        assert!(said.contains(&format!("seq {seq}")), "{said}");
    }
    assert!(
        child.wait().expect("wait").success(),
        "exits after --count replies"
    );
}

#[test]
fn tun_forwarder_example_carries_tcp() {
    if !private_host("tuntap::tun_forwarder_example_carries_tcp") {
        return;
    }
    let out = Command::new(example("tun_forwarder"))
        .args(["--bytes", "2000000"])
        .output()
        .expect("run tun_forwarder");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("2000000 bytes intact"));
}

#[test]
fn vnet_hdr_superpacket_write_reaches_a_socket_as_segments() {
    if !private_host("tuntap::vnet_hdr_superpacket_write_reaches_a_socket_as_segments") {
        return;
    }
    let tun = uso_tun("gso1", "10.6.0.1/24");
    let sock = UdpSocket::bind("10.6.0.1:6000").expect("bind");
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    // One write: ten 1000-byte UDP segments in one superpacket, checksum left to the kernel.
    let payload: Vec<u8> = (0..10_000u32).map(|i| (i / 1000) as u8).collect();
    let mut p = packet::ipv4_udp(
        (Ipv4Addr::new(10, 6, 0, 2), 5000),
        (Ipv4Addr::new(10, 6, 0, 1), 6000),
        &payload,
    );
    let udp_len = (8 + payload.len()) as u32;
    // CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum.
    let pseudo = 0x0a06 + 0x0002 + 0x0a06 + 0x0001 + 17 + udp_len;
    let folded = !packet::checksum_with(pseudo, &[]);
    p[26..28].copy_from_slice(&folded.to_be_bytes());
    let hdr = VnetHeader {
        flags: vnet::FLAG_NEEDS_CSUM,
        gso_type: vnet::GsoType::UdpL4,
        ecn: false,
        hdr_len: 28,
        gso_size: 1000,
        csum_start: 20,
        csum_offset: 6,
    };
    let mut frame = hdr.encode().to_vec();
    frame.extend_from_slice(&p);
    tun.queues()[0].send(&frame).expect("write the superpacket");
    let mut buf = [0u8; 2000];
    for i in 0..10u8 {
        let n = sock.recv(&mut buf).expect("a segment arrives");
        assert_eq!(n, 1000, "segment {i}");
        assert!(
            buf[..n].iter().all(|b| *b == i),
            "segment {i} intact and in order"
        );
    }
}
