//! A user-space ICMP echo responder on a TUN device: the kernel routes pings for the TUN's
//! subnet into `tun0`, this program reads them and writes the replies back.
//!
//! ```sh
//! cargo build --example tun_echo
//! sudo unshare -n sh -c 'ip link set lo up
//!     target/debug/examples/tun_echo --address 10.200.0.1/24 & sleep 0.5
//!     ping -c 3 10.200.0.2'
//! ```
//!
//! Options: `--name NAME` (default tun0), `--address ADDR/LEN` (default 10.200.0.1/24; an
//! IPv6 address works too), `--count N` (exit after N replies), `--attach` (attach to an
//! existing, already addressed device, e.g. one `netbox run --tun` made; no privileges needed
//! when it is yours). The TUN's own address is answered by the kernel; every other address of
//! the subnet by this program.

use ipnetwork::IpNetwork;
use netbox::sys::netlink::Netlink;
use netbox::sys::tuntap::{packet, TunBuilder};

fn main() {
    if let Err(e) = run() {
        eprintln!("tun_echo: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut name = "tun0".to_string();
    let mut address: IpNetwork = "10.200.0.1/24".parse()?;
    let mut count: Option<u64> = None;
    let mut attach = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--name" => name = value()?,
            "--address" => address = value()?.parse()?,
            "--count" => count = Some(value()?.parse()?),
            "--attach" => attach = true,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async move {
        let tun = TunBuilder::tun().name(&name).open()?;
        let name = tun.name().to_string();
        // Address and link state through netbox's netlink module: the route to the subnet
        // comes with the address.
        if !attach {
            let netlink = Netlink::connect()?;
            let link = netlink
                .link_by_name(&name)
                .await?
                .ok_or(format!("{name} vanished"))?;
            netlink.add_address(&link, address).await?;
            netlink.set_up(link.index, &name).await?;
        }
        let queue = tun.into_async_queue()?;
        println!("tun_echo: answering pings on {name}");
        let mut buf = vec![0u8; 65_536];
        let mut replies = 0u64;
        while count.is_none_or(|c| replies < c) {
            let n = queue.recv(&mut buf).await?;
            let Some(reply) = packet::echo_reply(&buf[..n]) else {
                continue; // router solicitations, other protocols
            };
            if let Some(req) = packet::parse_echo_request(&buf[..n]) {
                println!(
                    "tun_echo: echo reply {} -> {} id {} seq {}",
                    req.dst, req.src, req.id, req.seq
                );
            }
            queue.send(&reply).await?;
            replies += 1;
        }
        Ok(())
    })
}
